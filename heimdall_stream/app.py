"""The consume → process → produce → commit loop: the only place with Kafka I/O and signals.

One iteration: consume at most as many captures as fit in the current micro-batch (so in-flight
work is bounded by ``max_batch_size``, and librdkafka's prefetch by ``queued.max.messages.kbytes``);
when the batch is due, run the pure pipeline and commit:

* ``exactly_once``: one transaction carries the results, the dead letters and the input offsets
  (``send_offsets_to_transaction``); if it must abort, the consumer seeks back to the batch's
  first offsets and the batch runs again;
* ``at_least_once``: results are flushed, and offsets committed only once every delivery is
  confirmed.

Redis dedup marks and cache entries are written only after the commit.  Rebalances: pending
captures are processed and committed in ``on_revoke`` (never for partitions no longer owned);
on ``on_lost`` they are dropped uncommitted, for the new owner to process.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from heimdall_stream.batching import MicroBatcher
from heimdall_stream.clients import consumer_config, producer_config
from heimdall_stream.config import Settings
from heimdall_stream.dedup import Store
from heimdall_stream.errors import ConfigurationError
from heimdall_stream.health import Health
from heimdall_stream.metrics import Metrics
from heimdall_stream.pipeline import BatchOutcome, DeadLetter, Decoded, InputRecord, decode_all
from heimdall_stream.routing import ModelSet
from heimdall_stream.scoring import ScoredBatch, score

log = logging.getLogger(__name__)
LAG_INTERVAL_S = 10.0
KAFKA_TIMEOUT_S = 30.0


class FatalKafkaError(RuntimeError):
    """The producer or consumer cannot go on (fenced, authorization, fatal idempotence error)."""


class StreamApp:
    """Consumes captures, localises them, and produces results with the configured semantics."""

    def __init__(
        self,
        settings: Settings,
        models: ModelSet,
        store: Store,
        metrics: Metrics,
        health: Health,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.settings = settings
        self.models = models
        self.store = store
        self.metrics = metrics
        self.health = health
        self.clock = clock
        self.wall = wall
        batching = settings.batching
        self.batcher: MicroBatcher[InputRecord] = MicroBatcher(
            batching.max_batch_size, batching.max_wait_ms / 1000.0, clock
        )
        self.exactly_once = settings.kafka.delivery == "exactly_once"
        self.consumer = Consumer({**consumer_config(settings), "error_cb": self._on_kafka_error})
        self.producer = Producer({**producer_config(settings), "error_cb": self._on_kafka_error})
        self._batch_seq = 0
        self._fatal: str | None = None
        self._assigned: set[tuple[str, int]] = set()
        self._next_lag_at = 0.0
        self._renew_producer = False
        self._swap_lock = threading.Lock()
        self._pending: tuple[ModelSet, threading.Event] | None = None

    # ------------------------------------------------------------------ lifecycle

    def run(self, stop: threading.Event) -> None:
        """Run until ``stop`` is set; then finish the pending batch and leave the group."""
        if self.exactly_once:
            self._call(self.producer.init_transactions, KAFKA_TIMEOUT_S)
        self.consumer.subscribe(
            [self.settings.kafka.input_topic],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        self._publish_model_metrics()
        log.info(
            "consuming %s as %s (group %s, %s, model %s)",
            self.settings.kafka.input_topic,
            self.settings.instance_id,
            self.settings.kafka.group_id,
            self.settings.kafka.delivery,
            ", ".join(m.label for m in self.models.models),
        )
        try:
            while not stop.is_set():
                self.step()
            self._process(self.batcher.take(force=True))
        finally:
            self.close()

    def step(self) -> None:
        """One loop iteration: consume what fits, process a due batch, refresh gauges."""
        if self._fatal:
            raise FatalKafkaError(self._fatal)
        self.health.beat()
        self._swap_if_offered()
        if self.batcher.ready():
            self._process(self.batcher.take())
        messages = self._consume()
        now = self.clock()
        for message in messages:
            self._accept(message, now)
        if self.batcher.ready():
            self._process(self.batcher.take())
        self.metrics.in_flight.set(len(self.batcher))
        self.health.update(redis_healthy=self.store.healthy)
        if now >= self._next_lag_at:
            self._next_lag_at = now + LAG_INTERVAL_S
            self._update_lag()

    def close(self) -> None:
        """Leave the group (commits nothing) and flush the producer."""
        self.metrics.ready.set(0)
        try:
            self.consumer.close()
        except (KafkaException, RuntimeError) as exc:
            log.warning("consumer close failed: %s", exc)
        self.producer.flush(10)
        log.info("stopped %s", self.settings.instance_id)

    # ------------------------------------------------------------------ consuming

    def _consume(self) -> list[Message]:
        """Messages that fit in the batch, without making the first one wait for company.

        ``consume`` only returns early once it has ``num_messages``: an empty batch therefore
        first takes what is already fetched, then blocks for just one message; a started batch
        blocks at most until it is due.
        """
        room = max(self.batcher.room, 1)
        if len(self.batcher):
            return self.consumer.consume(num_messages=room, timeout=min(self.batcher.time_left(), 0.2))
        ready = self.consumer.consume(num_messages=room, timeout=0)
        return ready or self.consumer.consume(num_messages=1, timeout=0.2)

    def _accept(self, message: Message, now: float) -> None:
        error = message.error()
        if error is not None:
            if error.code() != KafkaError._PARTITION_EOF:
                self.metrics.kafka_errors.labels(error.name()).inc()
                log.warning("consume error: %s", error.str())
                if error.fatal():
                    self._fatal = error.str()
            return
        self.metrics.captures_consumed.inc()
        topic, partition, offset = message.topic(), message.partition(), message.offset()
        if topic is None or partition is None or offset is None:  # only for error events
            return
        self.batcher.add(
            InputRecord(
                topic=topic,
                partition=partition,
                offset=offset,
                key=message.key(),
                value=message.value(),
                consumed_at=now,
            )
        )

    # ------------------------------------------------------------------ processing

    def offer(self, models: ModelSet) -> threading.Event:
        """Hand over a new model set; the loop swaps it in between two batches."""
        swapped = threading.Event()
        with self._swap_lock:
            self._pending = (models, swapped)
        return swapped

    def current(self) -> ModelSet:
        """The model set in force."""
        return self.models

    def _swap_if_offered(self) -> None:
        with self._swap_lock:
            pending, self._pending = self._pending, None
        if pending is None:
            return
        models, swapped = pending
        old = self.models
        self.models = models
        for model in old.models:
            with contextlib.suppress(KeyError):
                self.metrics.model_weight.remove(model.name, model.version)
        self._publish_model_metrics()
        swapped.set()

    def _process(self, records: list[InputRecord]) -> None:
        if not records:
            return
        self._batch_seq += 1
        decoded, bad = decode_all(records, self.settings.limits)
        scored = score(
            self.models,
            decoded,
            self.store,
            settings=self.settings,
            metrics=self.metrics,
            batch_id=f"{self.settings.instance_id}-{self._batch_seq}",
            clock=self.clock,
            wall=self.wall,
            dedup=self._dedup,
        )
        scored.outcome.dead_letters.extend(bad)
        if not self._commit(records, scored.outcome):
            return  # aborted: the consumer was rewound and the batch will run again
        self._after_commit(scored)

    def _dedup(self, items: list[Decoded]) -> list[Decoded]:
        """Drop captures already done (Redis) or repeated within the batch."""
        done = self.store.filter_done(sorted({item.capture.capture_id for item in items}))
        fresh: list[Decoded] = []
        seen: set[str] = set()
        for item in items:
            capture_id = item.capture.capture_id
            if capture_id in done or capture_id in seen:
                continue
            seen.add(capture_id)
            fresh.append(item)
        duplicates = len(items) - len(fresh)
        if duplicates:
            self.metrics.dedup_hits.inc(duplicates)
        return fresh

    def _after_commit(self, scored: ScoredBatch) -> None:
        outcome = scored.outcome
        self.store.mark_done([r.localization.capture_id for r in outcome.results])
        self.store.put_many(
            {r.cache_key: r.prediction for r in outcome.results if not r.localization.cache_hit}
        )
        now, done_at = self.wall(), self.clock()
        for stats in scored.versions:
            version = stats.model.version
            self.metrics.record_cache(version, stats.cache_hits, stats.fresh - stats.cache_hits)
            self.metrics.batch_size.labels(version).observe(stats.fresh)
            if stats.inference_s:
                self.metrics.inference_latency.labels(version).observe(stats.inference_s)
            if stats.results:
                self.metrics.results_produced.labels(version).inc(len(stats.results))
            for result in stats.results:
                lag = (now - result.captured_at).total_seconds()
                self.metrics.end_to_end_latency.labels(version).observe(max(lag, 0.0))
                self.metrics.processing_latency.observe(max(done_at - result.record.consumed_at, 0.0))
        for letter in outcome.dead_letters:
            self.metrics.dead_letters.labels(letter.reason).inc()

    # ------------------------------------------------------------------ committing

    def _commit(self, records: Sequence[InputRecord], outcome: BatchOutcome) -> bool:
        offsets = next_offsets(records)
        try:
            if self.exactly_once:
                self._commit_transaction(outcome, offsets)
            else:
                self._commit_at_least_once(outcome, offsets)
        except KafkaException as exc:
            error = exc.args[0]
            if error.fatal():
                self.metrics.transactions.labels("fatal").inc()
                raise FatalKafkaError(f"fatal Kafka error: {error.str()}") from exc
            self.metrics.transactions.labels("aborted").inc()
            log.warning("batch not committed (%s); rewinding to reprocess it", error.str())
            if self.exactly_once and error.txn_requires_abort():
                self._call(self.producer.abort_transaction, KAFKA_TIMEOUT_S)
            self._rewind(records)
            return False
        self.metrics.transactions.labels("committed").inc()
        return True

    def _commit_transaction(self, outcome: BatchOutcome, offsets: list[TopicPartition]) -> None:
        self._renew_producer_if_needed()
        producer = self.producer
        producer.begin_transaction()
        self._produce_outcome(outcome)
        producer.send_offsets_to_transaction(
            offsets, self.consumer.consumer_group_metadata(), KAFKA_TIMEOUT_S
        )
        self._call(producer.commit_transaction, KAFKA_TIMEOUT_S)

    def _commit_at_least_once(self, outcome: BatchOutcome, offsets: list[TopicPartition]) -> None:
        failures: list[KafkaError] = []

        def on_delivery(error: KafkaError | None, _message: Message) -> None:
            if error is not None:
                failures.append(error)

        self._produce_outcome(outcome, on_delivery)
        remaining = self.producer.flush(KAFKA_TIMEOUT_S)
        if remaining or failures:
            reason = failures[0] if failures else KafkaError(KafkaError._TIMED_OUT, "flush timed out")
            raise KafkaException(reason)
        self.consumer.commit(offsets=offsets, asynchronous=False)

    def _produce_outcome(self, outcome: BatchOutcome, on_delivery: Any = None) -> None:
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
                    # Producer queue full: stop fetching input until delivery reports make room.
                    if not paused:
                        paused = [TopicPartition(t, p) for t, p in sorted(self._assigned)]
                        self.consumer.pause(paused)
                        self.metrics.paused.set(1)
                    self.producer.poll(0.05)
        finally:
            if paused:
                self.consumer.resume(paused)
                self.metrics.paused.set(0)

    def _rewind(self, records: Sequence[InputRecord]) -> None:
        for tp in first_offsets(records):
            if (tp.topic, tp.partition) in self._assigned:
                try:
                    self.consumer.seek(tp)
                except KafkaException as exc:
                    log.warning("seek %s[%d] failed: %s", tp.topic, tp.partition, exc)

    def _call(self, method: Callable[[float], Any], timeout: float) -> Any:
        """Call a transactional API, retrying while librdkafka says the error is retriable."""
        for _attempt in range(5):
            try:
                return method(timeout)
            except KafkaException as exc:
                if not exc.args[0].retriable():
                    raise
                log.warning("retrying %s: %s", method.__name__, exc.args[0].str())
        return method(timeout)

    # ------------------------------------------------------------------ rebalances, errors

    def _on_assign(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._assigned |= {(tp.topic, tp.partition) for tp in partitions}
        self.metrics.rebalances.labels("assign").inc()
        log.info("assigned %s", sorted(tp.partition for tp in partitions))
        self.health.update(partitions=len(self._assigned))

    def _on_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Finish and commit what was consumed from them while the generation is still ours.
        self._process(self.batcher.take(force=True))
        self._forget(partitions, "revoke")

    def _on_lost(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        lost = {(tp.topic, tp.partition) for tp in partitions}
        dropped = self.batcher.drop(lambda r: (r.topic, r.partition) not in lost)
        log.warning(
            "lost %d partitions; %d pending captures left for their new owner", len(lost), len(dropped)
        )
        self._forget(partitions, "lost")

    def _forget(self, partitions: list[TopicPartition], kind: str) -> None:
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
        else:
            if error.code() == KafkaError._ALL_BROKERS_DOWN:
                self._renew_producer = True
            log.warning("Kafka: %s", error.str())

    def _renew_producer_if_needed(self) -> None:
        """After every broker was down, start the next transaction on a fresh producer.

        librdkafka can keep a stale group-coordinator entry across a cluster outage, and then
        ``send_offsets_to_transaction`` waits forever (librdkafka issue 5511).  A new producer with
        the same ``transactional.id`` has no such cache, and ``init_transactions`` fences the old
        one and aborts whatever transaction it left open.
        """
        if not (self._renew_producer and self.exactly_once):
            return
        self._renew_producer = False
        log.warning("renewing the transactional producer after a broker outage")
        self.producer = Producer({**producer_config(self.settings), "error_cb": self._on_kafka_error})
        self._call(self.producer.init_transactions, KAFKA_TIMEOUT_S)
        self.metrics.transactions.labels("producer_renewed").inc()

    def _update_lag(self) -> None:
        assigned = [TopicPartition(t, p) for t, p in sorted(self._assigned)]
        if not assigned:
            return
        try:
            positions = self.consumer.position(assigned)
        except KafkaException:
            return
        for tp in positions:
            try:
                _low, high = self.consumer.get_watermark_offsets(tp, timeout=1.0, cached=False)
            except KafkaException:
                continue
            if tp.offset >= 0:
                self.metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(max(high - tp.offset, 0))

    def _publish_model_metrics(self) -> None:
        models = self.models
        self.metrics.model_loaded.set(1)
        self.metrics.ready.set(1)
        for model, weight in models.primaries:
            self.metrics.model_weight.labels(model.name, model.version).set(weight)
        for model in models.shadows:
            self.metrics.model_weight.labels(model.name, model.version).set(0.0)
        # Generation 0 is the model named in configuration, before any deployment applies.
        self.metrics.model_generation.labels(models.model_name).set(models.generation)
        self.health.update(
            model_loaded=True,
            generation=models.generation,
            models={m.label: w for m, w in models.primaries},
            shadows=[m.label for m in models.shadows],
        )


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


def check_connectivity(settings: Settings, timeout_s: float = 15.0) -> None:
    """Fail fast with a clear error when the brokers cannot be reached or refuse us."""
    from confluent_kafka.admin import AdminClient

    errors: list[str] = []

    def on_error(error: KafkaError) -> None:
        errors.append(error.str())

    admin = AdminClient({**settings.kafka.client_config(), "error_cb": on_error})  # type: ignore[dict-item]
    try:
        admin.list_topics(timeout=timeout_s)
    except KafkaException as exc:
        detail = "; ".join(errors[-3:]) or exc.args[0].str()
        raise ConfigurationError(
            f"cannot reach Kafka at {settings.kafka.bootstrap_servers}: {detail}"
        ) from exc
