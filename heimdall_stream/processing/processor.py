"""The batch path: records in, a ``ScoredBatch`` out; bookkeeping after the commit.

``BatchProcessor.process`` runs, for one consumed batch: decode → route (sticky, by a hash of
``capture_id``) → validate against the routed version's contract → dedup → cache look-up →
infer (one inference batch per version, never mixed; poison isolated) → finish → shadow
comparison.  It writes nothing to Kafka: ``before_commit`` writes pending dedup marks,
``stream.delivery`` commits the outcome, and only then does ``after_commit`` mark the captures
done, fill the cache and record the metrics; a batch that is thrown away to run again (its
transaction aborted) is handed to ``discard``.

Several worker threads may run ``process`` at once.  What they share is safe for that: the
dedup claims (locked), the batch counter (atomic), the model sessions (onnxruntime's ``run`` is
thread-safe), the metrics, and the store (redis-py's pool; its degraded-mode flags are plain
values whose races only shift when Redis is probed again).

Validation comes before dedup, so a malformed copy of a capture can never stand in for the
valid one: every invalid message goes to the DLQ, and only valid captures count as done.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from heimdall_stream.config import LimitsSettings
from heimdall_stream.errors import InternalError
from heimdall_stream.metrics import Metrics
from heimdall_stream.models.inference import LoadedModel
from heimdall_stream.models.quality import IN_DISTRIBUTION_QUALITY
from heimdall_stream.models.routing import ModelSet
from heimdall_stream.processing.cache import ResultCache
from heimdall_stream.processing.dedup import Deduplicator
from heimdall_stream.processing.infer import infer_rows
from heimdall_stream.processing.intake import decode_all, rejection
from heimdall_stream.processing.records import DeadLetter, Decoded, InputRecord, ScoredBatch, VersionStats
from heimdall_stream.processing.results import FinishContext, finish_all
from heimdall_stream.processing.shadow import compare_shadow, record_shadow

log = logging.getLogger(__name__)


class BatchProcessor:
    """Scores batches with whatever model set is in force when each batch starts."""

    def __init__(
        self,
        models: Callable[[], ModelSet],
        dedup: Deduplicator,
        cache: ResultCache,
        metrics: Metrics,
        *,
        limits: LimitsSettings,
        confidence: float,
        batch_prefix: str,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._models = models
        self.dedup = dedup
        self.cache = cache
        self.metrics = metrics
        self.limits = limits
        self.confidence = confidence
        self._batch_prefix = batch_prefix
        self._clock = clock
        self._wall = wall
        self._sequence = itertools.count(1)  # next() is atomic: safe from several workers

    def process(self, records: Sequence[InputRecord]) -> ScoredBatch:
        """Score one batch; the outcome holds results and dead letters for every record."""
        clock = self._clock
        started = clock()
        models = self._models()  # one model set for the whole batch: a swap waits for the next
        decoded, dead = decode_all(records, self.limits)
        scored = ScoredBatch(
            list(records),
            f"{self._batch_prefix}-{next(self._sequence)}",
            dead_letters=dead,
            started_at=started,
        )
        valid, slot_of = self._route_and_validate(models, decoded, scored)
        fresh = self.dedup.claim_fresh(valid)
        scored.claimed = [item.capture.capture_id for item in fresh]
        try:
            scored.stages["decode"] = clock() - started
            by_slot: dict[int, list[Decoded]] = {}
            for item in fresh:
                by_slot.setdefault(slot_of[item.capture.capture_id], []).append(item)
            for slot, items in sorted(by_slot.items()):
                self._score_version_or_dead_letter(models.primaries[slot][0], models.shadows, items, scored)
        except BaseException:
            self.dedup.release(scored.claimed)  # the batch runs again; its captures are not taken
            raise
        scored.finished_at = clock()
        return scored

    def before_commit(self, scored: ScoredBatch) -> None:
        """Write pending dedup marks for the batch's results (before its transaction commits).

        No crash between the commit and ``after_commit`` can then let an upstream repeat
        through (``processing.dedup``).
        """
        self.dedup.pend(scored.results)

    def after_commit(self, scored: ScoredBatch) -> None:
        """Mark the batch's captures done, cache its predictions, record its metrics."""
        self.dedup.remember([r.localization.capture_id for r in scored.results])
        self.dedup.release(scored.claimed)
        self.cache.save(scored.results)
        metrics = self.metrics
        now, done_at = self._wall(), self._clock()
        for stats in scored.versions:
            version = stats.version
            metrics.record_cache(version, stats.cache_hits, stats.fresh - stats.cache_hits)
            metrics.batch_size.labels(version).observe(stats.fresh)
            if stats.inference_s:
                metrics.inference_latency.labels(version).observe(stats.inference_s)
            if stats.results:
                metrics.results_produced.labels(version).inc(len(stats.results))
                doubtful = sum(r.localization.quality < IN_DISTRIBUTION_QUALITY for r in stats.results)
                metrics.doubtful_results.labels(version).inc(doubtful)
            end_to_end = metrics.end_to_end_latency.labels(version)  # looked up once per batch
            for result in stats.results:
                end_to_end.observe(max((now - result.captured_at).total_seconds(), 0.0))
                metrics.processing_latency.observe(max(done_at - result.record.consumed_at, 0.0))
        for letter in scored.dead_letters:
            metrics.dead_letters.labels(letter.reason).inc()
        for comparison in scored.shadows:
            record_shadow(comparison, metrics)
        self._record_stages(scored)

    def discard(self, scored: ScoredBatch) -> None:
        """Forget a batch that will run again (aborted, or behind one that was)."""
        self.dedup.release(scored.claimed)

    def _record_stages(self, scored: ScoredBatch) -> None:
        stage = self.metrics.stage_duration
        for record in scored.records:
            if record.broker_delay_s is not None:
                stage.labels("broker").observe(max(record.broker_delay_s, 0.0))
            stage.labels("queue").observe(max(scored.started_at - record.consumed_at, 0.0))
        for name, seconds in scored.stages.items():
            stage.labels(name).observe(seconds)

    def _route_and_validate(
        self, models: ModelSet, decoded: list[Decoded], scored: ScoredBatch
    ) -> tuple[list[Decoded], dict[str, int]]:
        """Valid captures in input order, and the primary slot each capture id routes to."""
        slots = [0] * len(decoded)
        for slot, rows in models.split([item.capture.capture_id for item in decoded]).items():
            for row in rows:
                slots[row] = slot
        valid: list[Decoded] = []
        slot_of: dict[str, int] = {}
        for item, slot in zip(decoded, slots, strict=True):
            slot_of[item.capture.capture_id] = slot  # the route depends on the id alone
            letter = rejection(item, models.primaries[slot][0].contract, self.limits)
            if letter is None:
                valid.append(item)
            else:
                scored.dead_letters.append(letter)
        return valid, slot_of

    def _score_version_or_dead_letter(
        self, model: LoadedModel, shadows: Sequence[LoadedModel], items: list[Decoded], scored: ScoredBatch
    ) -> None:
        """Score one version's captures; an error nobody anticipated dead-letters them.

        Inference failures are already isolated per capture (bisection); anything else that
        escapes (a bug in preparing or finishing) would otherwise stop the instance and stop it
        again on the same batch after every restart.  Dead-lettered with reason ``internal``,
        logged with its traceback and counted, the captures stay replayable from the DLQ.
        """
        results, letters, versions = len(scored.results), len(scored.dead_letters), len(scored.versions)
        try:
            self._score_version(model, shadows, items, scored)
        except Exception as exc:
            log.exception("scoring %d captures with %s failed; dead-lettering them", len(items), model.label)
            del scored.results[results:], scored.dead_letters[letters:], scored.versions[versions:]
            error = InternalError(f"{model.label}: {type(exc).__name__}: {exc}")
            scored.dead_letters.extend(DeadLetter.of(item.record, error) for item in items)

    def _score_version(
        self, model: LoadedModel, shadows: Sequence[LoadedModel], items: list[Decoded], scored: ScoredBatch
    ) -> None:
        clock, stages = self._clock, scored.stages
        began = clock()
        prepared = model.prepare([item.capture for item in items])
        cached = self.cache.lookup(prepared.cache_keys)
        started = clock()
        stages["features"] = stages.get("features", 0.0) + started - began
        inferred = infer_rows(model, prepared, cached, clock)
        context = FinishContext(
            model=model,
            confidence=self.confidence,
            radius=model.contract.radius(self.confidence),
            batch_id=f"{scored.batch_id}-v{model.version}",
            batch_size=len(items),
            inference_started=started,
            inference_ms=inferred.seconds * 1000.0,
            now=self._wall(),
        )
        inferred_at = clock()
        stages["inference"] = stages.get("inference", 0.0) + inferred_at - started
        results, letters = finish_all(items, prepared, inferred, context)
        scored.results.extend(results)
        scored.dead_letters.extend(letters)
        scored.versions.append(
            VersionStats(model.version, len(items), len(inferred.hits), inferred.seconds, tuple(results))
        )
        for shadow in shadows:
            scored.shadows.append(compare_shadow(shadow, items, results, self.limits, clock=clock))
        stages["finish"] = stages.get("finish", 0.0) + clock() - inferred_at
