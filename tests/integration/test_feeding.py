"""The input path keeps compute fed: with large captures and a small prefetch, no starvation.

librdkafka stops fetching for ``fetch.queue.backoff.ms`` once its prefetch queue is full (1 s by
default); with ~280 KB captures the queue holds a few dozen, and a consumer whose compute drains
them faster than that starves for the rest of the second.  Here compute is simulated at a known
rate (a stand-in for the batch processor that only sleeps, so no CPU is contended) set to a
third of what this machine's broker delivers to a plain consumer (measured first in the same
test, capped at ``MAX_SIMULATED_RATE``): the stream loop on real Kafka must then reach at least
0.9 of the simulated rate.  The rates come from this machine in this run, so a slower machine
lowers them together.
"""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from confluent_kafka import Consumer
from prometheus_client import CollectorRegistry

from heimdall_stream.health import Health
from heimdall_stream.metrics import Metrics
from heimdall_stream.models.inference import load_model
from heimdall_stream.models.registry import file_sha256
from heimdall_stream.models.routing import ModelSet
from heimdall_stream.processing.records import InputRecord, ScoredBatch
from heimdall_stream.stream.app import StreamApp
from heimdall_stream.stream.swap import ModelSwap
from tests.helpers import tiny_features_model
from tests.integration.conftest import send_captures

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CAPTURES = 300
PREFETCH_KBYTES = 2048  # a few captures per partition: the queue fills long before the backlog ends
# Above this a single worker's batches come faster than one transaction per batch on a loaded
# 2-core machine, and the test would measure commit overhead instead of the input path.
MAX_SIMULATED_RATE = 160.0


class SleepingProcessor:
    """Stands in for the batch processor: costs ``1 / rate`` seconds per capture, emits nothing."""

    def __init__(self, rate: float, expected: int) -> None:
        self.rate = rate
        self.expected = expected
        self.committed = 0
        self.first_started: float | None = None
        self.done = threading.Event()
        self.done_at = 0.0
        self._lock = threading.Lock()

    def process(self, records: list[InputRecord]) -> ScoredBatch:
        started = time.monotonic()
        with self._lock:
            self.first_started = self.first_started or started
        time.sleep(len(records) / self.rate)
        return ScoredBatch(list(records), "sleep", started_at=started, finished_at=time.monotonic())

    def before_commit(self, scored: ScoredBatch) -> None:
        """No dedup marks to write."""

    def after_commit(self, scored: ScoredBatch) -> None:
        self.committed += len(scored.records)
        if self.committed >= self.expected:
            self.done_at = time.monotonic()
            self.done.set()

    def discard(self, scored: ScoredBatch) -> None:
        """Nothing to release."""


def _plain_read_rate(bootstrap: str, topic: str, count: int) -> float:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"plain-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    consumer.subscribe([topic])
    seen, first = 0, None
    deadline = time.monotonic() + 300
    try:
        while seen < count and time.monotonic() < deadline:
            for message in consumer.consume(num_messages=100, timeout=0.5):
                if message.error() is None:
                    first = first or time.monotonic()
                    seen += 1
    finally:
        consumer.close()
    assert seen == count, f"read {seen} of {count} captures"
    assert first is not None
    return count / max(time.monotonic() - first, 1e-3)


def test_a_slow_batch_path_is_never_starved_by_the_input_path(make_settings, tmp_path):
    settings = make_settings(
        kafka={"prefetch_kbytes": PREFETCH_KBYTES},
        batching={"max_batch_size": 32, "max_wait_ms": 0, "workers": 1},
        model={"control_enabled": False},
    )
    send_captures(settings, CAPTURES, pool=20, seed=5)
    plain = _plain_read_rate(settings.kafka.bootstrap_servers, settings.kafka.input_topic, CAPTURES)
    compute = SleepingProcessor(rate=min(plain / 3, MAX_SIMULATED_RATE), expected=CAPTURES)

    path = tmp_path / "tiny.onnx"
    path.write_bytes(tiny_features_model())
    model = load_model(path, name="tiny", version="1", uri="models:/tiny/1", sha256=file_sha256(path))
    app = StreamApp(
        settings,
        compute,  # type: ignore[arg-type]
        ModelSwap(ModelSet.single(model)),
        Metrics(CollectorRegistry()),
        Health(),
    )
    stop = threading.Event()
    runner = threading.Thread(target=app.run, args=(stop,), daemon=True)
    runner.start()
    try:
        # Done, or the loop died (its exception is on stderr): never wait out the bound for nothing.
        deadline = time.monotonic() + 600
        while not compute.done.wait(0.5) and runner.is_alive() and time.monotonic() < deadline:
            pass
        assert compute.done.is_set(), f"only {compute.committed} of {CAPTURES} captures committed" + (
            "" if runner.is_alive() else " (the stream loop stopped)"
        )
    finally:
        stop.set()
        runner.join(60)
    assert compute.first_started is not None
    achieved = CAPTURES / (compute.done_at - compute.first_started)
    ratio = achieved / compute.rate
    print(
        f"plain read {plain:.0f}/s, simulated compute {compute.rate:.0f}/s, stream loop {achieved:.0f}/s "
        f"(ratio {ratio:.2f})"
    )
    assert ratio >= 0.9, f"the input path starved compute: {ratio:.2f} of the simulated rate"
