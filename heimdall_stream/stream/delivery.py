"""Delivery of a batch's outputs: exactly-once transactions or at-least-once flushes.

``exactly_once``: one Kafka transaction carries the results, the dead letters and the input
offsets (``send_offsets_to_transaction``) of one or more batches; when it must abort, the caller
seeks the consumer back (``rewind``) over them and every batch behind them, which run again,
after a wait that grows with every abort in a row; past ``HEIMDALL_KAFKA__ABORT_RETRIES`` the
instance stops (``stream.aborts``).  A transaction that can be neither committed nor aborted
stops the instance (``FatalKafkaError``).  A ``send_offsets_to_transaction`` that hangs past its
timeout (librdkafka waiting forever for a dead group coordinator) aborts the batch too: the
producer is abandoned and the next transaction starts on a fresh one (``bounded``).
``at_least_once``: results are flushed, and the offsets stored only once every delivery is
confirmed, for the loop to commit (``acked``, ``stream.acked_offsets``).  Either way nothing is
committed for a capture whose output was not written.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from heimdall_stream.clients import producer_config
from heimdall_stream.config import Settings
from heimdall_stream.errors import FatalKafkaError
from heimdall_stream.metrics import Metrics
from heimdall_stream.processing.records import DeadLetter, InputRecord, ScoredBatch
from heimdall_stream.retry import Backoff, retry_call
from heimdall_stream.stream.aborts import AbortBudget
from heimdall_stream.stream.acked_offsets import AckedOffsets
from heimdall_stream.stream.bounded import CallHungError, bounded_call

log = logging.getLogger(__name__)
KAFKA_TIMEOUT_S = 30.0
# Calls of a transactional API while librdkafka says its error is retriable (5 retries).
TRANSACTIONAL_ATTEMPTS = 6
# How long an abort first waits for the transaction's produce requests to complete.
ABORT_FLUSH_S = 10.0
# How much longer than its own timeout a transactional call may block before it counts as hung.
HUNG_GRACE_S = 5.0
# Abandoned producers still wedged at once, past which the instance stops: each holds a
# librdkafka handle (threads, sockets) for as long as its call hangs, and a restart frees them.
MAX_WEDGED_PRODUCERS = 3


def commits_off_the_loop(settings: Settings) -> bool:
    """Whether transactions (at least once: the flushes) run on the commit thread.

    ``batching.overlap_commit``; at least once commits the offsets on the loop thread afterwards.
    """
    return settings.batching.overlap_commit


class Delivery:
    """Writes results and dead letters and commits the input offsets of each batch."""

    def __init__(
        self,
        settings: Settings,
        consumer: Consumer,
        metrics: Metrics,
        on_error: Callable[[KafkaError], None],
        assigned: Callable[[], set[tuple[str, int]]],
    ) -> None:
        self.settings = settings
        self.consumer = consumer
        self.metrics = metrics
        self.exactly_once = settings.kafka.delivery == "exactly_once"
        self._on_error = on_error
        self._assigned = assigned
        self._renew_producer = False
        self._wedged: list[threading.Thread] = []  # helpers still blocked in an abandoned producer
        # The offsets a transaction commits for its records (the join puts its own in).
        self.offsets_of: Callable[[Sequence[InputRecord]], list[TopicPartition]] = next_offsets
        self.producer = Producer({**producer_config(settings), "error_cb": on_error})
        self.aborts = AbortBudget(settings.kafka, metrics)
        # At least once: offsets of acknowledged batches, committed by the loop.
        self.acked = None if self.exactly_once else AckedOffsets(consumer, metrics, assigned)
        # Pause the input while the producer's queue is full.  Off when commits run on a thread
        # of their own: the consumer is the loop's, whose in-flight bound stops it meanwhile.
        self.pause_input_when_full = not commits_off_the_loop(settings)
        self._next_full_log = 0.0

    def start(self) -> None:
        """Register the transactional id (fencing any previous holder of it).

        A refusal (no ACL on the transactional id, a coordinator that never answers) stops the
        instance with the broker's reason (``FatalKafkaError``) before anything is consumed.
        """
        if not self.exactly_once:
            return
        try:
            self._call(self.producer.init_transactions, KAFKA_TIMEOUT_S)
        except KafkaException as exc:
            self.metrics.transactions.labels("fatal").inc()
            kafka = self.settings.kafka
            raise FatalKafkaError(
                f"cannot register the transactional id {producer_config(self.settings)['transactional.id']} "
                f"(user {kafka.sasl_username!r}): {exc.args[0].str()}"
            ) from exc

    def outage(self) -> None:
        """Every broker was down: the next transaction starts on a fresh producer."""
        self._renew_producer = True

    def close(self) -> None:
        """Deliver whatever is still queued."""
        self.producer.flush(10)

    def group_metadata(self) -> Any:
        """The consumer's group metadata for ``commit`` (its generation fences a zombie's offsets)."""
        return self.consumer.consumer_group_metadata()

    def commit(self, batches: Sequence[ScoredBatch], offsets: list[TopicPartition], metadata: Any) -> bool:
        """Write and commit batches (in one transaction); False when aborted.

        At least once this writes and flushes them only: the caller stores ``offsets`` on the
        loop thread afterwards (``acked``).
        ``offsets`` (``offsets_of`` their records) and ``metadata`` (``group_metadata``, exactly
        once only) are taken by the caller on the consumer's thread beforehand: this may run on
        another (``stream.committer``), and confluent-kafka serialises calls on one consumer, so
        a call from here would wait for the loop's poll.  An aborted commit leaves the consumer
        where it is: the caller rewinds it (``rewind``) over these batches and whatever it
        consumed after them.
        """
        records = [record for batch in batches for record in batch.records]
        try:
            if self.exactly_once:
                self._commit_transaction(batches, offsets, metadata)
            else:
                self._deliver_at_least_once(batches)
        except KafkaException as exc:
            error = exc.args[0]
            if error.fatal():
                self.metrics.transactions.labels("fatal").inc()
                raise FatalKafkaError(f"fatal Kafka error: {error.str()}") from exc
            self.metrics.transactions.labels("aborted").inc()
            log.warning("batch not committed (%s); rewinding to reprocess it", error.str())
            if self.exactly_once:
                self._abort(error)
            self.aborts.aborted(error, records)  # waits before the retry, or stops past the bound
            return False
        except CallHungError as exc:
            self._abandon_producer(exc, records)
            return False
        self.metrics.transactions.labels("committed").inc()
        self.aborts.committed()
        return True

    def _commit_transaction(
        self, batches: Sequence[ScoredBatch], offsets: list[TopicPartition], metadata: Any
    ) -> None:
        self._renew_producer_if_needed()
        producer = self.producer
        producer.begin_transaction()
        for batch in batches:
            self._produce_outcome(batch)

        def send_offsets(timeout: float) -> None:
            # Bounded here: librdkafka can ignore this timeout (issues 5456 and 5511).
            bounded_call(
                lambda: producer.send_offsets_to_transaction(offsets, metadata, timeout),
                timeout + HUNG_GRACE_S,
                "send_offsets_to_transaction",
            )

        self._call(send_offsets, KAFKA_TIMEOUT_S)
        self._call(producer.commit_transaction, KAFKA_TIMEOUT_S)

    def _deliver_at_least_once(self, batches: Sequence[ScoredBatch]) -> None:
        failures: list[KafkaError] = []

        def on_delivery(error: KafkaError | None, _message: Message) -> None:
            if error is not None:
                failures.append(error)

        for batch in batches:
            self._produce_outcome(batch, on_delivery)
        remaining = self.producer.flush(KAFKA_TIMEOUT_S)
        if remaining or failures:
            reason = failures[0] if failures else KafkaError(KafkaError._TIMED_OUT, "flush timed out")
            raise KafkaException(reason)

    def _produce_outcome(self, outcome: ScoredBatch, on_delivery: Any = None) -> None:
        kafka = self.settings.kafka
        for result in outcome.results:
            self._produce(
                kafka.output_topic, result.localization.capture_id.encode(), result.value, None, on_delivery
            )
        for letter in outcome.dead_letters:
            value, headers = dead_letter_message(letter, self.settings)
            self._produce(kafka.dlq_topic, letter.record.key, value, headers, on_delivery)

    def _produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, str | bytes | None]] | None,
        on_delivery: Any,
    ) -> None:
        paused: list[TopicPartition] = []
        try:
            while True:
                try:
                    self.producer.produce(
                        topic, key=key, value=value, headers=headers, on_delivery=on_delivery
                    )
                    return
                except BufferError:
                    # Producer queue full: wait for delivery reports to make room, and (on the
                    # loop's thread) stop fetching input meanwhile.
                    if time.monotonic() >= self._next_full_log:
                        # Once a minute at most: under back-pressure every produce may wait.
                        self._next_full_log = time.monotonic() + 60.0
                        log.warning("producer queue full: waiting for delivery reports (%s)", topic)
                    if not paused and self.pause_input_when_full:
                        paused = [TopicPartition(t, p) for t, p in sorted(self._assigned())]
                        self.consumer.pause(paused)
                        self.metrics.paused.set(1)
                    self.producer.poll(0.05)
        finally:
            if paused:
                self.consumer.resume(paused)
                self.metrics.paused.set(0)

    def rewind(self, records: Sequence[InputRecord]) -> None:
        """Seek the owned partitions back to the lowest offset of ``records`` (to run them again).

        A seek that fails would let the next commit skip those captures: that stops the
        instance instead (``FatalKafkaError``); a restart resumes from the last commit.
        """
        for tp in first_offsets(records):
            if (tp.topic, tp.partition) in self._assigned():
                try:
                    self.consumer.seek(tp)
                except KafkaException as exc:
                    self.metrics.transactions.labels("rewind_failed").inc()
                    raise FatalKafkaError(
                        f"cannot rewind {tp.topic}[{tp.partition}] to {tp.offset}: {exc.args[0].str()}"
                    ) from exc

    def _abandon_producer(self, hung: CallHungError, records: Sequence[InputRecord]) -> None:
        """A transactional call hung inside librdkafka: drop that producer, rewind the batch.

        The open transaction can be neither committed nor aborted through the wedged producer.
        It never reached ``commit_transaction``, so nothing of it is committed; the fresh
        producer's ``init_transactions`` (before the next transaction) fences the old one and
        has the coordinator abort what it left open.  The hung call keeps the old producer
        alive on its helper thread until it returns, if ever.
        """
        self._wedged = [helper for helper in self._wedged if helper.is_alive()] + [hung.helper]
        if len(self._wedged) > MAX_WEDGED_PRODUCERS:
            self.metrics.transactions.labels("fatal").inc()
            raise FatalKafkaError(
                f"{len(self._wedged)} transactional producers are wedged in librdkafka ({hung}); "
                "nothing of their transactions was committed, a restart resumes from the last commit"
            )
        self.metrics.transactions.labels("aborted").inc()
        log.warning("batch not committed (%s); renewing the producer and rewinding to reprocess it", hung)
        self._renew_producer = True
        error = KafkaError(KafkaError._TIMED_OUT, str(hung), retriable=True)
        self.aborts.aborted(error, records)  # waits before the retry, or stops past the bound

    def _abort(self, error: KafkaError) -> None:
        """Abort the open transaction; if that is refused too, its outcome is unknown: stop.

        On restart ``init_transactions`` settles whatever this instance left open.
        """
        # Produce requests still in flight can make the abort fail with INVALID_TXN_STATE
        # (librdkafka issue 4849): let them finish or fail first, for a bounded time (a record
        # for a deleted topic never finishes; the abort purges it).
        self.producer.flush(ABORT_FLUSH_S)
        try:
            self._call(self.producer.abort_transaction, KAFKA_TIMEOUT_S)
        except KafkaException as exc:
            self.metrics.transactions.labels("fatal").inc()
            raise FatalKafkaError(
                f"transaction failed ({error.str()}) and could not be aborted ({exc.args[0].str()})"
            ) from exc

    def _call(
        self, method: Callable[[float], Any], timeout: float, *, sleep: Callable[[float], None] = time.sleep
    ) -> Any:
        """Call a transactional API, retrying while librdkafka says the error is retriable.

        Up to ``TRANSACTIONAL_ATTEMPTS`` calls, waiting 0.1 s doubling to 2 s in between (a
        coordinator that is moving needs a moment); the last failure, or the first one that is
        not a retriable ``KafkaException``, is raised unchanged.
        """

        def retriable(exc: BaseException) -> bool:
            return isinstance(exc, KafkaException) and bool(exc.args[0].retriable())

        def warn(exc: BaseException, delay: float) -> None:
            log.warning("retrying %s in %.2f s: %s", method.__name__, delay, exc)

        return retry_call(
            lambda: method(timeout),
            attempts=TRANSACTIONAL_ATTEMPTS,
            retriable=retriable,
            backoff=Backoff(first_s=0.1, max_s=2.0),
            sleep=sleep,
            on_retry=warn,
        )

    def _renew_producer_if_needed(self) -> None:
        """After every broker was down, or a call hung, start the next transaction on a fresh producer.

        librdkafka can keep a stale group-coordinator entry across a cluster outage, and then
        ``send_offsets_to_transaction`` waits forever (librdkafka issue 5511).  A new producer with
        the same ``transactional.id`` has no such cache, and ``init_transactions`` fences the old
        one and aborts whatever transaction it left open.
        """
        if not (self._renew_producer and self.exactly_once):
            return
        self._renew_producer = False
        log.warning("renewing the transactional producer (after a broker outage or a hung call)")
        self.producer = Producer({**producer_config(self.settings), "error_cb": self._on_error})
        self._call(self.producer.init_transactions, KAFKA_TIMEOUT_S)
        self.metrics.transactions.labels("producer_renewed").inc()


def next_offsets(records: Sequence[InputRecord]) -> list[TopicPartition]:
    """Offsets to commit: one past the highest consumed offset of each partition."""
    highest: dict[tuple[str, int], int] = {}
    for record in records:
        key = (record.topic, record.partition)
        highest[key] = max(highest.get(key, -1), record.offset)
    return [TopicPartition(t, p, o + 1) for (t, p), o in sorted(highest.items())]


def first_offsets(records: Sequence[InputRecord]) -> list[TopicPartition]:
    """Where to seek back to re-consume a batch: its lowest offset of each partition."""
    lowest: dict[tuple[str, int], int] = {}
    for record in records:
        key = (record.topic, record.partition)
        lowest[key] = min(lowest.get(key, record.offset), record.offset)
    return [TopicPartition(t, p, o) for (t, p), o in sorted(lowest.items())]


def dead_letter_message(
    letter: DeadLetter, settings: Settings
) -> tuple[bytes | None, list[tuple[str, str | bytes | None]]]:
    """The original value (unless too large for the DLQ) and Kafka-Connect-style error headers."""
    record = letter.record
    headers: list[tuple[str, str | bytes | None]] = [
        ("heimdall.error.class", letter.error_class.encode()),
        ("heimdall.error.reason", letter.reason.encode()),
        ("heimdall.error.message", letter.message.encode()[:2048]),
        ("heimdall.source.topic", record.topic.encode()),
        ("heimdall.source.partition", str(record.partition).encode()),
        ("heimdall.source.offset", str(record.offset).encode()),
        ("heimdall.instance.id", settings.instance_id.encode()),
    ]
    value = record.value
    if value is not None and len(value) > settings.kafka.dlq_max_value_bytes:
        headers.append(("heimdall.value-omitted", str(len(value)).encode()))
        value = None
    return value, headers
