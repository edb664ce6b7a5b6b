"""Scoring API requests on the stream's batch path: ``BatchProcessor.process``, nothing of its own.

A micro-batch of requests is handed to ``BatchProcessor.process`` as input records (topic
``api``, partition -1, offset = the request's sequence number, which is what an answer's
``lineage`` then says), so decoding, routing, validation, the result cache, inference with
poison isolation and finishing are the stream's own code, and a bad capture gets the reason
the stream would dead-letter it with.  What differs, on purpose:

* **No dedup.** A request is a question, not an event: it is answered every time, and it
  never marks a capture done, so the stream still scores that capture when it comes by Kafka.
  The processor is given a deduplicator that lets everything through.
* **The result cache is read and written.** Its key covers exactly what the model saw and the
  model's sha256, so a hit is the answer the model would give; an answer computed here serves
  the stream (and later requests) too.
* **No shadows, nothing written to Kafka.** The routed answer comes from the stream's model set
  in force (same weights, same sticky route by ``capture_id``) without its shadow versions; a
  request may pin any version the instance holds (``model``), shadows included.
* **After the answer, nothing is committed**: the stream's after-commit bookkeeping (dedup
  marks, its result counters) is not run; the API counts its own requests (``api.metrics``).
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from heimdall_stream.config import Settings
from heimdall_stream.metrics import Metrics
from heimdall_stream.models.inference import LoadedModel
from heimdall_stream.models.routing import ModelSet
from heimdall_stream.processing.cache import ResultCache
from heimdall_stream.processing.dedup import Deduplicator
from heimdall_stream.processing.processor import BatchProcessor
from heimdall_stream.processing.records import DeadLetter, Decoded, InputRecord, Result
from heimdall_stream.processing.store import InMemoryStore, Store

API_TOPIC = "api"
API_PARTITION = -1


@dataclass(frozen=True, slots=True)
class Job:
    """One capture of a request, waiting to be scored."""

    seq: int  # unique per API instance: maps the outcome back, and is the answer's source_offset
    value: bytes
    pin: str | None  # a model version the request asks for, or None for the stream's routing
    arrived: float  # monotonic seconds


@dataclass(frozen=True, slots=True)
class Refusal:
    """A capture that was not scored: its model is not served, or it waited too long."""

    status: int
    reason: str
    message: str


Outcome = Result | DeadLetter | Refusal


class PassThrough(Deduplicator):
    """A deduplicator that lets every capture through and remembers nothing (see the module doc)."""

    def __init__(self, metrics: Metrics) -> None:
        super().__init__(InMemoryStore(), 0, metrics)

    def claim_fresh(self, items: Sequence[Decoded]) -> list[Decoded]:
        """Every item: a request is answered even when the stream already scored its capture."""
        return list(items)

    def release(self, capture_ids: object) -> None:
        """Nothing was claimed."""

    def remember(self, capture_ids: Sequence[str]) -> None:
        """Never marks a capture done: that is the stream's commit's job."""


def find_version(models: ModelSet, pin: str) -> LoadedModel | None:
    """The loaded model a pin names: ``3``, ``name/3`` or ``models:/name/3``; None if not held."""
    wanted = pin.removeprefix("models:/")
    for model in models.models:
        if wanted in (model.version, f"{model.name}/{model.version}") or pin == model.uri:
            return model
    return None


class Scorer:
    """Scores micro-batches of jobs on worker threads (``score`` is thread-safe)."""

    def __init__(
        self,
        models: Callable[[], ModelSet],
        store: Store,
        metrics: Metrics,
        settings: Settings,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._models = models
        self._cache = ResultCache(store)
        self._dedup = PassThrough(metrics)
        self._metrics = metrics
        self._settings = settings
        self._clock = clock
        self._batches = itertools.count(1)
        self._timeout_s = settings.api.queue_timeout_ms / 1000.0

    def served(self) -> ModelSet:
        """The stream's model set in force."""
        return self._models()

    def score(self, jobs: Sequence[Job]) -> list[Outcome]:
        """One outcome per job, in order: a result, the dead letter the stream would write, or a refusal."""
        outcomes: dict[int, Outcome] = {}
        now = self._clock()
        groups: dict[str | None, list[Job]] = {}
        for job in jobs:
            if now - job.arrived > self._timeout_s:
                outcomes[job.seq] = Refusal(
                    503, "queue_timeout", f"waited {now - job.arrived:.3f} s for a worker; try again"
                )
            else:
                groups.setdefault(job.pin, []).append(job)
        current = self._models()  # one model set for the whole micro-batch, like a stream batch
        for pin, group in groups.items():
            models = self._model_set(current, pin)
            if models is None:
                refusal = Refusal(
                    404, "model_not_served", f"model version {pin!r} is not held by this instance"
                )
                outcomes.update((job.seq, refusal) for job in group)
                continue
            scored = self._processor(models).process([self._record(job) for job in group])
            self._cache.save(scored.results)
            outcomes.update((r.record.offset, r) for r in scored.results)
            outcomes.update((d.record.offset, d) for d in scored.dead_letters)
        return [
            outcomes.get(job.seq) or Refusal(500, "internal", "the batch path gave no outcome")
            for job in jobs
        ]

    def _model_set(self, current: ModelSet, pin: str | None) -> ModelSet | None:
        if pin is None:
            return dataclasses.replace(current, shadows=()) if current.shadows else current
        model = find_version(current, pin)
        return None if model is None else ModelSet.single(model, current.generation)

    def _processor(self, models: ModelSet) -> BatchProcessor:
        """A processor over one model set: cheap (attributes only), so one per group of jobs."""
        settings = self._settings
        return BatchProcessor(
            lambda: models,
            self._dedup,
            self._cache,
            self._metrics,
            limits=settings.limits,
            confidence=settings.model.confidence,
            batch_prefix=f"{settings.instance_id}-api{next(self._batches)}",
            clock=self._clock,
        )

    @staticmethod
    def _record(job: Job) -> InputRecord:
        return InputRecord(API_TOPIC, API_PARTITION, job.seq, None, job.value, job.arrived)
