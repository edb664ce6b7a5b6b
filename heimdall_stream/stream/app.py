"""The consume → process → commit loop: the Kafka side only.

One iteration: consume at most as many captures as fit in the current micro-batch (so in-flight
work is bounded by ``max_batch_size``, and librdkafka's prefetch by ``queued.max.messages.kbytes``);
when the batch is due, hand it to the ``BatchProcessor`` and its outcome to ``delivery``, which
writes it and commits the input offsets exactly once (or at least once); after the commit the
processor does its bookkeeping (dedup marks, cache, metrics).  Nothing calls back up this corridor.

Rebalances: pending captures are processed and committed in ``on_revoke`` (never for partitions
no longer owned); on ``on_lost`` they are dropped uncommitted, for the new owner to process.  A
new model set offered by the control plane is swapped in between two batches.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from heimdall_stream.clients import consumer_config
from heimdall_stream.config import Settings
from heimdall_stream.errors import FatalKafkaError
from heimdall_stream.health import Health
from heimdall_stream.metrics import Metrics
from heimdall_stream.processing.processor import BatchProcessor
from heimdall_stream.processing.records import InputRecord
from heimdall_stream.stream.batching import MicroBatcher
from heimdall_stream.stream.delivery import Delivery
from heimdall_stream.stream.swap import ModelSwap

log = logging.getLogger(__name__)
LAG_INTERVAL_S = 10.0


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
    ) -> None:
        self.settings = settings
        self.processor = processor
        self.models = models
        self.metrics = metrics
        self.health = health
        self.clock = clock
        self._store_healthy = store_healthy
        batching = settings.batching
        self.batcher: MicroBatcher[InputRecord] = MicroBatcher(
            batching.max_batch_size, batching.max_wait_ms / 1000.0, clock
        )
        self.consumer = Consumer({**consumer_config(settings), "error_cb": self._on_kafka_error})
        self.delivery = Delivery(
            settings, self.consumer, metrics, self._on_kafka_error, lambda: self._assigned
        )
        self._fatal: str | None = None
        self._assigned: set[tuple[str, int]] = set()
        self._next_lag_at = 0.0

    # ------------------------------------------------------------------ lifecycle

    def run(self, stop: threading.Event) -> None:
        """Run until ``stop`` is set; then finish the pending batch and leave the group."""
        self.delivery.start()
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
            ", ".join(m.label for m in self.models.current().models),
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
        self.health.update(redis_healthy=self._store_healthy())
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
        self.delivery.close()
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

    def _swap_if_offered(self) -> None:
        offer = self.models.take_offer()
        if offer is None:
            return
        previous, swapped = offer
        for model in previous.models:
            with contextlib.suppress(KeyError):
                self.metrics.model_weight.remove(model.name, model.version)
        self._publish_model_metrics()
        swapped.set()

    def _process(self, records: list[InputRecord]) -> None:
        if not records:
            return
        scored = self.processor.process(records)
        if self.delivery.commit(scored):
            self.processor.after_commit(scored)
        # else: aborted; the consumer was rewound and the batch will run again

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
                self.delivery.outage()
            log.warning("Kafka: %s", error.str())

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
        models = self.models.current()
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
