"""The consume → process → commit loop: the Kafka side only.

One iteration: settle the transaction in flight, hand the batches the workers have scored to
the committer (oldest first, several in one transaction when several are ready), hand the
waiting captures to an idle worker, and consume what fits in the next batch.  The committer
runs the transaction (at least once: the flush) on the loop thread, or with
``batching.overlap_commit`` on a thread of its own (``stream.committer``) while the loop goes
on consuming and scoring; one transaction at a time, in consumption order.  A batch
goes to a worker as soon as one is idle (optionally after ``max_wait_ms`` to fill; a small one
with the pipeline empty is scored on this thread while it has time, ``stream.loop_load``): an idle
pipeline answers at once, a busy one batches what arrives meanwhile, so batches grow with the
load, like a dynamic batcher.  In-flight work is bounded by the pipeline (``2 × workers``
batches), the transaction in flight and one batch being filled (librdkafka's prefetch by
``queued.max.messages.kbytes``).  ``delivery`` writes each outcome and commits its offsets;
before it the processor writes pending dedup marks, after it does its bookkeeping (done marks,
cache, metrics), and the trimmer (``stream.allocator``) hears that the memory is free.

A transaction that aborts throws away every batch after it too (scored, being scored or being
filled) and seeks back to the oldest offset of all of them, so they run again in order.

Rebalances: everything consumed is scored and committed in ``on_revoke`` (while the generation
is still ours); on ``on_lost`` it is all thrown away uncommitted and the partitions still owned
are sought back to it (the lost ones are their new owner's).  After a failure nothing more is
committed (a transaction already in flight ends first): a restart resumes from the last
commit.  A new model set offered by the control plane is swapped in between two batches.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable

from confluent_kafka import (
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)

from heimdall_stream.clients import AUTHORIZATION_ERRORS, consumer_config
from heimdall_stream.config import Settings
from heimdall_stream.errors import FatalKafkaError
from heimdall_stream.health import Health
from heimdall_stream.join.stage import JoinStage
from heimdall_stream.metrics import Metrics
from heimdall_stream.processing.processor import BatchProcessor
from heimdall_stream.processing.records import InputRecord, ScoredBatch
from heimdall_stream.stream import gauges
from heimdall_stream.stream.aborts import waiting_alive
from heimdall_stream.stream.acked_offsets import offset_commit_reporter
from heimdall_stream.stream.allocator import Trimmer
from heimdall_stream.stream.batching import MicroBatcher
from heimdall_stream.stream.committer import Committer
from heimdall_stream.stream.delivery import Delivery, commits_off_the_loop
from heimdall_stream.stream.loop_load import LoopLoad
from heimdall_stream.stream.pipeline import BatchPipeline
from heimdall_stream.stream.swap import ModelSwap

log = logging.getLogger(__name__)
LAG_INTERVAL_S = 10.0
# How long a poll may block: briefly while workers or the committer hold batches (what they finish
# is handed on promptly), longer with nothing to do but wait for input (it returns with a message).
BUSY_POLL_S = 0.005
IDLE_POLL_S = 0.2
# A transaction in flight for longer than this stops the loop's heartbeat, as a commit on the
# loop thread did: /healthz then says stuck (a wait before a retried batch beats on its own).
COMMIT_BEAT_S = 10.0


class StreamApp:
    """Consumes captures, localises them, and produces results with the configured semantics."""

    def __init__(
        self,
        settings: Settings,
        processor: BatchProcessor,
        models: ModelSwap,
        metrics: Metrics,
        health: Health,
        *,
        store_healthy: Callable[[], bool] = lambda: True,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        join: JoinStage | None = None,
    ) -> None:
        self.settings = settings
        self.processor = processor
        self.models = models
        self.metrics = metrics
        self.health = health
        self.clock = clock
        # Wall time only to compare with the producer's message timestamps (another process).
        self.wall = wall
        self._store_healthy = store_healthy
        batching = settings.batching
        self.batcher: MicroBatcher[InputRecord] = MicroBatcher(
            batching.max_batch_size, batching.max_wait_ms / 1000.0, clock
        )
        inline = min(batching.inline_max_captures, batching.max_batch_size - 1)  # full: to workers
        self.pipeline = BatchPipeline(processor, batching.workers, inline, LoopLoad(clock))
        self.trimmer = Trimmer(settings.memory.trim_interval_ms / 1000.0)
        callbacks = {"error_cb": self._on_kafka_error, "on_commit": offset_commit_reporter(metrics)}
        self.consumer = Consumer({**consumer_config(settings), **callbacks})
        self.delivery = Delivery(
            settings, self.consumer, metrics, self._on_kafka_error, lambda: self._assigned
        )
        overlap = commits_off_the_loop(settings)
        self.committer = Committer(self.delivery, processor, metrics, overlap=overlap, clock=clock)
        # Per-receiver parts, joined into sets that enter the batcher like whole captures.
        self.join = join
        if join is not None:
            self.delivery.offsets_of = join.commit_offsets
        self._fatal: str | None = None
        self._failed = False
        self._assigned: set[tuple[str, int]] = set()
        self._next_lag_at = 0.0

    # ------------------------------------------------------------------ lifecycle

    def run(self, stop: threading.Event) -> None:
        """Run until ``stop`` is set; then finish the pending batch and leave the group."""
        self.delivery.start()
        # A stop request ends a wait before a retried batch; /healthz hears from the loop meanwhile.
        self.delivery.aborts.sleep = waiting_alive(stop, self.health.beat, self.clock)
        self.trimmer.start()
        topics = [self.settings.kafka.input_topic] + ([self.join.topic] if self.join else [])
        self.consumer.subscribe(
            topics,
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        gauges.publish_model_metrics(self.models.current(), self.metrics, self.health)
        log.info(
            "consuming %s as %s (group %s, %s, model %s)",
            self.settings.kafka.input_topic,
            self.settings.instance_id,
            self.settings.kafka.group_id,
            self.settings.kafka.delivery,
            ", ".join(m.label for m in self.models.current().models),
        )
        finished = False
        try:
            while not stop.is_set():
                self.step()
            self._finish_everything()
            finished = True
        finally:
            if not finished:
                # Something failed: nothing behind the last commit is committed now (a restart
                # resumes from there), but a transaction already in flight ends first (its batches
                # are the oldest, all scored), so the consumer and producer close after it.
                self._failed = True
                self._settle_after_failure()
            self.close()
            self.committer.close()
            self.pipeline.close()
            self.trimmer.stop()

    def step(self) -> None:
        """One loop iteration: commit scored batches, dispatch, consume, refresh gauges."""
        if self._fatal:
            raise FatalKafkaError(self._fatal)
        if self.committer.running_for() < COMMIT_BEAT_S:
            self.health.beat()
        self._swap_if_offered()
        self._settle()
        # Dispatch before delivering: a worker starts its next batch while this one commits.
        self._dispatch()
        self._deliver()
        messages = self._consume()
        now = self.clock()
        wall = self.wall() if messages else 0.0
        for message in messages:
            self._accept(message, now, wall)
        if self.join is not None:
            for record in self.join.tick():
                self.batcher.add(record)
        self._settle()
        self._dispatch()
        self._deliver()
        self.metrics.in_flight.set(len(self.batcher) + self.pipeline.captures() + self.committer.captures())
        gauges.update_loop(self.pipeline.load, self.metrics)
        self.health.update(redis_healthy=self._store_healthy())
        if now >= self._next_lag_at:
            self._next_lag_at = now + LAG_INTERVAL_S
            gauges.update_lag(self.consumer, self._assigned, self.metrics)

    def close(self) -> None:
        """Leave the group (revoking commits what is finished, unless the loop failed), flush."""
        self.metrics.ready.set(0)
        try:
            self.consumer.close()
        except (KafkaException, RuntimeError) as exc:
            log.warning("consumer close failed: %s", exc)
        self.delivery.close()
        log.info("stopped %s", self.settings.instance_id)

    # ------------------------------------------------------------------ consuming

    def _consume(self) -> list[Message]:
        """Messages that fit in the batch being filled, without making the first one wait.

        ``consume(n, timeout)`` only returns early once it has n messages, so what is already
        fetched is taken without waiting, and only when nothing is there does the loop block in
        ``poll``, which returns as soon as one message arrives.  Never a message held across a
        second call: a rebalance served in it may seek the partition back (``_on_lost``, an
        aborted commit in ``_on_revoke``), and librdkafka drops what a seek made stale only from
        the call that served it.  While workers or the committer hold batches the poll blocks
        briefly, so what they finish is handed on promptly; with the next batch full and every
        worker busy the loop waits for any batch to be scored or the transaction instead.
        """
        room = self.batcher.room
        if room == 0:
            self.pipeline.wait_for_progress(IDLE_POLL_S, also=self.committer.pending())
            return []
        timeout = IDLE_POLL_S
        if len(self.pipeline) or len(self.batcher) or self.committer.busy:
            # A batch that is due only waits for a worker: keep filling it until one is idle.
            due = self.batcher.ready() or not len(self.batcher)
            timeout = BUSY_POLL_S if due else min(self.batcher.time_left(), BUSY_POLL_S)
        ready = self.consumer.consume(num_messages=room, timeout=0)
        if ready:
            return ready
        first = self.pipeline.load.wait(lambda: self.consumer.poll(timeout))
        return [] if first is None else [first]

    def _accept(self, message: Message, now: float, wall: float) -> None:
        error = message.error()
        if error is not None:
            if error.code() != KafkaError._PARTITION_EOF:
                self.metrics.kafka_errors.labels(error.name()).inc()
                log.warning("consume error: %s", error.str())
                if error.fatal():
                    self._fatal = error.str()
                elif error.code() in AUTHORIZATION_ERRORS:
                    # An ACL missing on the input or the group is never granted by waiting.
                    self._fatal = f"{error.str()} (user {self.settings.kafka.sasl_username!r})"
            return
        topic, partition, offset = message.topic(), message.partition(), message.offset()
        if topic is None or partition is None or offset is None:  # only for error events
            return
        if (topic, partition) not in self._assigned:  # fetched before a revoke served meanwhile
            return
        record = InputRecord(
            topic=topic,
            partition=partition,
            offset=offset,
            key=message.key(),
            value=message.value(),
            consumed_at=now,
            broker_delay_s=_since_timestamp(message, wall),
        )
        if self.join is not None and self.join.owns(record):
            for ready in self.join.accept(record):  # sets (and the parts it refused), when ready
                self.batcher.add(ready)
            return
        self.metrics.captures_consumed.inc()
        self.batcher.add(record)

    # ------------------------------------------------------------------ processing

    def _swap_if_offered(self) -> None:
        offer = self.models.take_offer()
        if offer is None:
            return
        previous, swapped = offer
        gauges.retire_model_metrics(previous, self.metrics)
        gauges.publish_model_metrics(self.models.current(), self.metrics, self.health)
        swapped.set()

    def _dispatch(self) -> None:
        """Hand the due batch to the pipeline when a worker is idle (a small one is scored here)."""
        if self.batcher.ready() and self.pipeline.has_idle_worker():
            self.pipeline.submit(self.batcher.take())

    def _deliver(self) -> None:
        """Hand the scored batches at the head of the pipeline to the committer, once it is free."""
        if self.committer.busy:
            return
        self._hand_over(self.pipeline.ready(), timeout=0.0)

    def _hand_over(self, batches: list[ScoredBatch], timeout: float | None) -> None:
        """Start the transaction of ``batches``; settle it within ``timeout`` (at once when it ran here)."""
        if batches:
            self.pipeline.load.blocking(self.committer.submit, batches)  # may commit right here
            self._settle(timeout)

    def _settle(self, timeout: float | None = 0.0) -> None:
        """Once the transaction in flight is over: its bookkeeping, or on abort the rewind."""
        outcome = self.committer.collect(timeout)
        if outcome is None:
            return
        if not outcome.committed:
            self._rewind(outcome.batches)
            return
        for batch in outcome.batches:  # Redis writes, on which the loop blocks
            self.pipeline.load.blocking(self.processor.after_commit, batch)
        self.trimmer.worked()

    def _settle_after_failure(self) -> None:
        """The loop failed: let the transaction in flight end; what follows it is not committed."""
        try:
            self._settle(timeout=None)
        except Exception as exc:  # the loop's own failure is the one raised
            log.warning("the transaction in flight when the loop failed did not settle: %s", exc)

    def _rewind(self, batches: list[ScoredBatch]) -> None:
        records = [record for batch in batches for record in batch.records]
        for batch in batches:
            self.processor.discard(batch)
        records += self.pipeline.discard() + self.batcher.take(force=True)
        self._rewind_records(records)

    def _rewind_records(self, records: list[InputRecord]) -> None:
        """Seek back over discarded records; the join re-reads its parts from its last commit."""
        if self.join is None:
            self.delivery.rewind(records)
            return
        self.delivery.rewind([r for r in records if not self.join.owns(r)])
        self.join.reset(self.consumer)

    def _finish_everything(self) -> None:
        """Score and commit every consumed capture (before a revoke, or when stopping)."""
        self._settle(timeout=None)  # an abort rewinds everything behind it: nothing is left
        pending = self.batcher.take(force=True)
        if pending:
            self.pipeline.submit(pending)
        self._hand_over(self.pipeline.drain(), timeout=None)
        if self.delivery.acked is not None:  # at least once: its offsets, before the partitions go
            self.delivery.acked.commit_now()

    # ------------------------------------------------------------------ rebalances, errors

    def _on_assign(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._assigned |= {(tp.topic, tp.partition) for tp in partitions}
        if self.join is not None:
            self.join.on_assign(self.consumer, partitions)
        self.metrics.rebalances.labels("assign").inc()
        log.info("assigned %s", sorted(tp.partition for tp in partitions))
        self.health.update(partitions=len(self._assigned))

    def _on_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Finish and commit what was consumed from them while the generation is still ours,
        # unless the loop failed: then nothing behind the last commit may be committed.
        if not self._failed:
            self._finish_everything()
        self._forget(partitions, "revoke")

    def _on_lost(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Nothing consumed may be committed now: throw it all away, seek the owned partitions back
        # to it, leave the lost ones to their new owner.  A transaction in flight ends first (its
        # offsets refused, it aborts and is rewound; at least once the lost ones are dropped).
        self._forget(partitions, "lost")
        self._settle(timeout=None)
        discarded = self.pipeline.discard() + self.batcher.take(force=True)
        self._rewind_records(discarded)
        log.warning(
            "lost %d partitions; %d consumed captures left to run again", len(partitions), len(discarded)
        )

    def _forget(self, partitions: list[TopicPartition], kind: str) -> None:
        if self.join is not None:
            self.join.forget(partitions)
        for tp in partitions:
            self._assigned.discard((tp.topic, tp.partition))
            with contextlib.suppress(KeyError):  # no lag series yet for this partition
                self.metrics.consumer_lag.remove(tp.topic, str(tp.partition))
        self.metrics.rebalances.labels(kind).inc()
        log.info("%s %s", kind, sorted(tp.partition for tp in partitions))
        self.health.update(partitions=len(self._assigned))

    def _on_kafka_error(self, error: KafkaError) -> None:
        self.metrics.kafka_errors.labels(error.name()).inc()
        if error.fatal():
            self._fatal = error.str()
            log.error("fatal Kafka error: %s", error.str())
        elif error.code() in (KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED):
            self._fatal = f"authentication failed: {error.str()}"
            log.error("%s", self._fatal)
        elif error.code() in AUTHORIZATION_ERRORS:
            self._fatal = f"{error.str()} (user {self.settings.kafka.sasl_username!r})"
            log.error("%s", self._fatal)
        else:
            if error.code() == KafkaError._ALL_BROKERS_DOWN:
                self.delivery.outage()
            log.warning("Kafka: %s", error.str())


def _since_timestamp(message: Message, wall: float) -> float | None:
    """Seconds from the message's own timestamp (producer or broker time) to ``wall``."""
    kind, millis = message.timestamp()
    if kind == TIMESTAMP_NOT_AVAILABLE or millis <= 0:
        return None
    return wall - millis / 1000.0
