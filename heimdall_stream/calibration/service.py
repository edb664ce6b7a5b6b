"""``heimdall-stream calibrate`` at run time: read results and truths, serve the metrics.

One consumer reads both topics ``read_committed`` (an aborted transaction's results never
count), in a consumer group of its own (``heimdall-calibrate-`` + the instance id)
that commits nothing: the join's state is in memory, so a starting calibrator reads both
topics again from ``window_s`` ago (or ``--from``), which refills the join with the entries
that could still meet their partner.  Run one calibrator per results topic; two would count
every truth twice.

``/metrics``, ``/healthz`` (the loop turns) and ``/readyz`` (partitions of both topics
assigned) answer on ``CALIBRATION__PORT``.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from types import FrameType
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from prometheus_client import CollectorRegistry

from heimdall_stream.calibration.calibrator import Calibrator
from heimdall_stream.calibration.metrics import CalibrationMetrics
from heimdall_stream.clients import reader_config
from heimdall_stream.config import Settings
from heimdall_stream.errors import FatalKafkaError
from heimdall_stream.health import Health, serve

log = logging.getLogger(__name__)
POLL_S = 0.2


class CalibrationHealth(Health):
    """Ready once the loop turns and partitions of both topics are assigned (no model here)."""

    def ready(self) -> tuple[bool, dict[str, Any]]:
        """Whether the calibrator reads both topics, and its detail."""
        _, detail = super().ready()
        detail.pop("model_loaded", None)
        ok = self.live()[0] and bool(detail.get("loop_started")) and bool(detail.get("assigned"))
        return ok, detail


class CalibrationService:
    """The calibrator: its metrics endpoint and its consume loop."""

    def __init__(
        self,
        settings: Settings,
        *,
        start_at: datetime | None = None,
        registry: CollectorRegistry | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        config = settings.calibration
        self.topics = (settings.kafka.output_topic, config.truth_topic)
        self.start_at = start_at
        self.registry = registry or CollectorRegistry()
        self.metrics = CalibrationMetrics(self.registry, config.coverage_window)
        self.calibrator = Calibrator(
            self.metrics,
            confidences=config.confidences,
            window_s=config.window_s,
            max_pending=config.max_pending,
            wall_clock=wall_clock,
        )
        self.health = CalibrationHealth()
        self.health.update(topics=list(self.topics), assigned={})
        self._wall_clock = wall_clock
        self._server = serve(config.host, config.port, self.registry, self.health)
        self.port = int(self._server.server_address[1])
        log.info("calibrate: metrics, /healthz and /readyz on port %d", self.port)

    def run(self, stop: threading.Event) -> None:
        """Consume both topics until ``stop`` is set; raises ``FatalKafkaError`` on a fatal error."""
        group = f"heimdall-calibrate-{self.settings.instance_id}"
        consumer = Consumer({**reader_config(self.settings, group), "client.id": group})
        results_topic, truth_topic = self.topics
        try:
            consumer.subscribe(list(self.topics), on_assign=self._on_assign)
            log.info("calibrate: joining %s with %s (group %s)", results_topic, truth_topic, group)
            while not stop.is_set():
                self.health.beat()
                message = consumer.poll(POLL_S)
                if message is None:
                    continue
                error = message.error()
                if error is not None:
                    self._on_error(error)
                    continue
                where = f"{message.topic()}/{message.partition()}/{message.offset()}"
                if message.topic() == results_topic:
                    self.calibrator.on_result(message.value(), where)
                else:
                    self.calibrator.on_truth(message.key(), message.value(), where)
        finally:
            consumer.close()
            self._server.shutdown()
            self._server.server_close()

    def _start_time(self) -> datetime:
        if self.start_at is not None:
            return self.start_at
        window = timedelta(seconds=self.settings.calibration.window_s)
        return datetime.fromtimestamp(self._wall_clock(), UTC) - window

    def _on_assign(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        """Start each partition at the first record at or after the start time, else at its end."""
        stamp = int(self._start_time().timestamp() * 1000)
        wanted = [TopicPartition(tp.topic, tp.partition, stamp) for tp in partitions]
        found = consumer.offsets_for_times(wanted, timeout=30)
        for tp, hit in zip(partitions, found, strict=True):
            # -1: nothing at or after the time; the end is looked up now, not left to OFFSET_END,
            # which is resolved at the first fetch and would skip what arrived in between.
            tp.offset = hit.offset if hit.offset >= 0 else consumer.get_watermark_offsets(tp, timeout=30)[1]
        assigned: dict[str, int] = {}
        for tp in partitions:
            assigned[tp.topic] = assigned.get(tp.topic, 0) + 1
        both = all(assigned.get(topic) for topic in self.topics)
        self.health.update(assigned=assigned if both else {})
        consumer.assign(partitions)

    def _on_error(self, error: KafkaError) -> None:
        if error.code() == KafkaError._PARTITION_EOF:
            return
        if error.fatal():
            raise FatalKafkaError(f"calibrate: fatal Kafka error: {error.str()}")
        log.warning("calibrate: %s", error.str())


def run_calibrate(settings: Settings, start_at: datetime | None) -> None:
    """Run the calibrator in the main thread until SIGTERM or SIGINT."""
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("calibrate: received %s, stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        CalibrationService(settings, start_at=start_at).run(stop)
    except KafkaException as exc:  # e.g. not authorised to read a topic
        raise FatalKafkaError(f"calibrate: {exc}") from exc
