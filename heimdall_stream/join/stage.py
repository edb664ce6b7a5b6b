"""The join inside the stream loop: the Kafka side of ``Joiner`` and the batch path's view of it.

``JoinStage`` is what ``stream.app`` talks to: parts in (``accept``), idle windows closed
(``tick``), the offsets a transaction commits (``commit_offsets``: the whole-capture records'
as before, the receivers partitions' from the join's checkpoints, with the join state as
offset metadata), the committed checkpoints read back on assignment (``on_assign``), and
everything uncommitted thrown away and re-read after an abort or a lost assignment
(``reset``).  ``JoiningProcessor`` is the batch path with one addition: a record the join
dead-lettered is a dead letter without being decoded, and a commit tells the join what it
committed.  Sets themselves are ordinary captures to it (that arrive decoded); a set it
refuses is dead-lettered as its parts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicPartition

from heimdall_stream.config import Settings
from heimdall_stream.errors import FatalKafkaError
from heimdall_stream.join.checkpoint import Checkpoint
from heimdall_stream.join.joiner import Emission, Joiner
from heimdall_stream.metrics import Metrics
from heimdall_stream.processing.processor import BatchProcessor
from heimdall_stream.processing.records import DeadLetter, InputRecord, ScoredBatch

log = logging.getLogger(__name__)
COMMITTED_TIMEOUT_S = 30.0
Offsets = Callable[[Sequence[InputRecord]], list[TopicPartition]]


class JoinStage:
    """The join of one consumer instance."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        whole_offsets: Offsets,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.topic = settings.join.topic
        self.metrics = metrics
        self.joiner = Joiner(settings.join, settings.limits.max_message_bytes)
        self._whole_offsets = whole_offsets
        self._clock = clock
        self._proposed: dict[int, Checkpoint] = {}

    def owns(self, record: InputRecord) -> bool:
        """Whether a record belongs to the join (a part, a set, or a part it dead-lettered)."""
        return record.topic == self.topic

    # ------------------------------------------------------------------ the loop

    def accept(self, record: InputRecord) -> list[InputRecord]:
        """A consumed part; the records it made ready for the batch path."""
        self.metrics.join_parts.inc()
        out = self.joiner.accept(record, self._clock())
        if self.joiner.evictions:
            self._log_evictions()
        return out

    def tick(self) -> list[InputRecord]:
        """Close the sets of idle partitions; refresh the state gauges.

        The loop calls it once per iteration, after the parts it consumed: the gauges follow
        the state per iteration, not per part.
        """
        out = self.joiner.tick(self._clock())
        self._after_change()
        return out

    def _log_evictions(self) -> None:
        for eviction in self.joiner.evictions:
            log.warning("join state at its bound: %s", eviction)
        self.joiner.evictions.clear()

    def _after_change(self) -> None:
        self._log_evictions()
        self.metrics.join_open_sets.set(self.joiner.open_sets)
        self.metrics.join_pending_bytes.set(self.joiner.pending_bytes)

    # ------------------------------------------------------------------ commits

    def commit_offsets(self, records: Sequence[InputRecord]) -> list[TopicPartition]:
        """The offsets (and join state) one transaction carrying ``records`` commits."""
        offsets = self._whole_offsets([r for r in records if not self.owns(r)])
        self._proposed = self.joiner.checkpoints([r for r in records if self.owns(r)])
        for partition, checkpoint in sorted(self._proposed.items()):
            offsets.append(TopicPartition(self.topic, partition, checkpoint.offset, checkpoint.metadata()))
        return offsets

    def committed(self, records: Sequence[InputRecord]) -> None:
        """A batch with these records was committed (the first of a transaction brings its checkpoints)."""
        proposed, self._proposed = self._proposed, {}
        for emission in self.joiner.committed(proposed, [r for r in records if self.owns(r)]):
            self._count(emission)

    def _count(self, emission: Emission) -> None:
        metrics = self.metrics
        if emission.outcome is not None:
            metrics.join_sets.labels(emission.outcome).inc()
        if emission.wait_s is not None:
            metrics.join_wait.observe(max(emission.wait_s, 0.0))
        if emission.letter is not None:
            metrics.join_parts_rejected.labels(emission.letter.reason).inc()

    # ------------------------------------------------------------------ rebalances, aborts

    def on_assign(self, consumer: Consumer, partitions: Sequence[TopicPartition]) -> None:
        """Start joining newly assigned receivers partitions from their committed checkpoints."""
        ours = [TopicPartition(tp.topic, tp.partition) for tp in partitions if tp.topic == self.topic]
        if not ours:
            return
        try:
            committed = consumer.committed(ours, timeout=COMMITTED_TIMEOUT_S)
        except KafkaException as exc:
            raise FatalKafkaError(f"cannot read the committed join state of {self.topic}: {exc}") from exc
        now = self._clock()
        for tp in committed:
            try:
                checkpoint = Checkpoint.parse(tp.offset, tp.metadata) if tp.offset >= 0 else None
            except (ValueError, IndexError) as exc:
                # Guessing would join parts already emitted again: stop and say where.
                raise FatalKafkaError(
                    f"the committed join state of {self.topic}[{tp.partition}] at {tp.offset} does not "
                    f"parse ({exc}): {tp.metadata!r:.200}"
                ) from exc
            self.joiner.assign(tp.partition, checkpoint, now)
            if checkpoint is not None and checkpoint.done:
                log.info(
                    "%s[%d]: resuming at %d, %d parts after it already done",
                    self.topic,
                    tp.partition,
                    checkpoint.offset,
                    len(checkpoint.done),
                )

    def forget(self, partitions: Sequence[TopicPartition]) -> None:
        """Drop the state of revoked or lost partitions (their new owner re-reads it)."""
        for tp in partitions:
            if tp.topic == self.topic:
                self.joiner.forget(tp.partition)
        self._after_change()

    def reset(self, consumer: Consumer) -> None:
        """Throw away everything uncommitted and seek back to re-read it (after an abort or a loss)."""
        self._proposed = {}
        for partition, offset in sorted(self.joiner.reset(self._clock()).items()):
            try:
                consumer.seek(TopicPartition(self.topic, partition, offset))
            except KafkaException as exc:
                raise FatalKafkaError(
                    f"cannot rewind {self.topic}[{partition}] to {offset}: {exc.args[0].str()}"
                ) from exc
        self._after_change()


class JoiningProcessor(BatchProcessor):
    """The batch path, aware of the records the join dead-lettered."""

    def __init__(self, stage: JoinStage, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stage = stage

    def process(self, records: Sequence[InputRecord]) -> ScoredBatch:
        """Score the captures and sets; the join's dead letters ride along unchanged.

        A set the batch path refuses (invalid, or its inference failed) is dead-lettered as
        the parts it was made of, each with its original bytes and offset and the set's reason:
        the set itself has no bytes that were ever on a topic.
        """
        joiner, stage = self.stage.joiner, self.stage
        letters = [letter for r in records if stage.owns(r) and (letter := joiner.letter(r)) is not None]
        if not letters:
            scored = super().process(records)
        else:
            dead = {(letter.record.partition, letter.record.offset) for letter in letters}
            rest = [r for r in records if not (stage.owns(r) and (r.partition, r.offset) in dead)]
            scored = super().process(rest)
            scored.records = list(records)
            scored.dead_letters = letters + scored.dead_letters
        if any(letter.record.parts for letter in scored.dead_letters):
            scored.dead_letters = [part for letter in scored.dead_letters for part in as_parts(letter)]
        # Until its transaction commits a set needs its offsets and parts, not its samples:
        # dropping them halves what a set holds meanwhile (the parts keep their own bytes).
        if any(r.parts for r in scored.records):
            scored.records = [without_capture(r) for r in scored.records]
            scored.results = [
                replace(r, record=without_capture(r.record)) if r.record.parts else r for r in scored.results
            ]
        return scored

    def after_commit(self, scored: ScoredBatch) -> None:
        """The batch path's bookkeeping, then the join's."""
        super().after_commit(scored)
        self.stage.committed(scored.records)


def without_capture(record: InputRecord) -> InputRecord:
    """A set's record without its decoded samples (any other record as it is)."""
    return replace(record, capture=None) if record.parts and record.capture is not None else record


def as_parts(letter: DeadLetter) -> list[DeadLetter]:
    """A set's dead letter as its parts' (same error), or the letter itself when it is no set."""
    parts = letter.record.parts
    if not parts:
        return [letter]
    return [replace(letter, record=part) for part in parts]
