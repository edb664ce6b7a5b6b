"""The consume → process → commit loop: consuming, batching, rebalances and model swaps.

One iteration: consume at most as many captures as fit in the current micro-batch (so in-flight
work is bounded by ``max_batch_size``, and librdkafka's prefetch by ``queued.max.messages.kbytes``);
when the batch is due, score it (``scoring``) and hand the outputs to ``delivery``, which writes
them and commits the input offsets exactly once (or at least once).

Redis dedup marks and cache entries are written only after the commit.  Rebalances: pending
captures are processed and committed in ``on_revoke`` (never for partitions no longer owned);
on ``on_lost`` they are dropped uncommitted, for the new owner to process.  A new model set
offered by the control plane is swapped in between two batches.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from heimdall_stream.config import Settings
from heimdall_stream.health import Health
from heimdall_stream.metrics import Metrics
from heimdall_stream.models.routing import ModelSet
from heimdall_stream.processing.dedup import RecentIds, Store
from heimdall_stream.processing.pipeline import Decoded, InputRecord, decode_all
from heimdall_stream.processing.scoring import ScoredBatch, score
from heimdall_stream.stream.batching import MicroBatcher
from heimdall_stream.stream.clients import consumer_config
from heimdall_stream.stream.delivery import Delivery, FatalKafkaError

log = logging.getLogger(__name__)
LAG_INTERVAL_S = 10.0


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
        self.recent = RecentIds(settings.redis.recent_ids)
        self.metrics = metrics
        self.health = health
        self.clock = clock
        self.wall = wall
        batching = settings.batching
        self.batcher: MicroBatcher[InputRecord] = MicroBatcher(
            batching.max_batch_size, batching.max_wait_ms / 1000.0, clock
        )
        self.consumer = Consumer({**consumer_config(settings), "error_cb": self._on_kafka_error})
        self.delivery = Delivery(
            settings, self.consumer, metrics, self._on_kafka_error, lambda: self._assigned
        )
        self._batch_seq = 0
        self._fatal: str | None = None
        self._assigned: set[tuple[str, int]] = set()
        self._next_lag_at = 0.0
        self._swap_lock = threading.Lock()
        self._pending: tuple[ModelSet, threading.Event] | None = None

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
        if not self.delivery.commit(records, scored.outcome):
            return  # aborted: the consumer was rewound and the batch will run again
        self._after_commit(scored)

    def _dedup(self, items: list[Decoded]) -> list[Decoded]:
        """Drop captures already done (Redis, else recent memory) or repeated within the batch."""
        done = self.store.filter_done(sorted({item.capture.capture_id for item in items}))
        fresh: list[Decoded] = []
        seen: set[str] = set()
        memory_only = 0
        for item in items:
            capture_id = item.capture.capture_id
            if capture_id in done or capture_id in seen:
                continue
            if capture_id in self.recent:
                memory_only += 1  # Redis forgot it (down, restarted, evicted): a duplicate averted
                continue
            seen.add(capture_id)
            fresh.append(item)
        duplicates = len(items) - len(fresh)
        if duplicates:
            self.metrics.dedup_hits.inc(duplicates)
        if memory_only:
            self.metrics.dedup_memory_hits.inc(memory_only)
        return fresh

    def _after_commit(self, scored: ScoredBatch) -> None:
        outcome = scored.outcome
        done = [r.localization.capture_id for r in outcome.results]
        self.recent.add(done)
        self.store.mark_done(done)
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
