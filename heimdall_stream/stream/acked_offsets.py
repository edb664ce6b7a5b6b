"""At least once: input offsets committed from the loop once their outputs are acknowledged.

Offsets are never auto-committed (DESIGN, Delivery semantics): at least once they are stored
only after the producer has confirmed every delivery of their batch (``AckedOffsets.store``, on
the loop thread once the flush returned), and the loop sends what is stored with one
asynchronous ``commit`` at most every ``interval_s`` (``commit_if_due``: one broker write a
second rather than one per batch, which is one capture at light load), and synchronously before
its partitions are revoked and when it stops (``commit_now``).  So no commit holds up the loop,
and none covers an output the broker has not confirmed.

The offsets are sent as given, metadata and all: the join's checkpoints ride in it, and a
checkpoint can change while its offset stays put (librdkafka's own commit of stored offsets
skips such a partition).  Only partitions still assigned are committed; what was stored for one
revoked or lost meanwhile is dropped (its new owner commits it).  A failed commit is counted in
``heimdall_kafka_errors_total{code}`` (``offset_commit_reporter``, the consumer's ``on_commit``)
and never raised: the next commit carries the same offsets or later ones, and at worst input
repeats after a restart, which the dedup marks hold back while Redis is up.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from heimdall_stream.metrics import Metrics

log = logging.getLogger(__name__)
# How often stored offsets are committed while batches flow, s: a crash repeats about this much
# input (more while commits fail).
COMMIT_INTERVAL_S = 1.0


class AckedOffsets:
    """The newest acknowledged offset of each partition, committed by the loop thread."""

    def __init__(
        self,
        consumer: Consumer,
        metrics: Metrics,
        assigned: Callable[[], set[tuple[str, int]]],
        *,
        interval_s: float = COMMIT_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.consumer = consumer
        self.metrics = metrics
        self._assigned = assigned
        self.interval_s = interval_s
        self.clock = clock
        self._pending: dict[tuple[str, int], TopicPartition] = {}
        self._last_commit = clock()

    def store(self, offsets: list[TopicPartition]) -> None:
        """Offsets of delivered batches, in consumption order (a later one replaces an earlier)."""
        for tp in offsets:
            self._pending[(tp.topic, tp.partition)] = tp

    def commit_if_due(self) -> None:
        """Commit what is stored, without waiting, if the last commit is ``interval_s`` old."""
        if self._pending and self.clock() - self._last_commit >= self.interval_s:
            self._commit(wait=False)

    def commit_now(self) -> None:
        """Commit what is stored and wait for the answer (before a revoke, when stopping)."""
        if self._pending:
            self._commit(wait=True)

    def _commit(self, *, wait: bool) -> None:
        owned = self._assigned()
        offsets = [tp for key, tp in sorted(self._pending.items()) if key in owned]
        self._pending.clear()
        self._last_commit = self.clock()
        if not offsets:
            return
        failed: list[KafkaError] = []
        try:
            if wait:  # the answer per partition; an asynchronous one reaches offset_commit_reporter
                answer = self.consumer.commit(offsets=offsets, asynchronous=False)
                failed = [tp.error for tp in answer if tp.error is not None]
            else:
                self.consumer.commit(offsets=offsets, asynchronous=True)
        except KafkaException as exc:
            failed = [exc.args[0]]
        if failed:
            self.metrics.kafka_errors.labels(failed[0].name()).inc()
            log.warning("offsets not committed (%s): the input behind them may repeat", failed[0].str())


def offset_commit_reporter(metrics: Metrics) -> Callable[[KafkaError | None, list[TopicPartition]], None]:
    """The consumer's ``on_commit``: an asynchronous commit that failed is counted and logged."""

    def on_commit(error: KafkaError | None, partitions: list[TopicPartition]) -> None:
        failed = [tp.error for tp in partitions if tp.error is not None]
        if (error is None or error.code() == KafkaError._NO_OFFSET) and not failed:
            return  # committed, or nothing to commit
        reason = error if error is not None else failed[0]
        metrics.kafka_errors.labels(reason.name()).inc()
        log.warning("offsets not committed (%s): the input behind them may repeat", reason.str())

    return on_commit
