"""Fixtures for consumer tests: a registered model, per-test settings, consumers, readers."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaException, Producer
from pydantic import SecretStr

from heimdall_stream.config import Settings
from heimdall_stream.lab.publisher import SimulationPlan, publish
from heimdall_stream.lab.reference import register_onnx
from heimdall_stream.lab.training import train_features_model
from heimdall_stream.network import load_network
from heimdall_stream.stream.service import ConsumerService
from heimdall_stream.wire.codec import localization_codec
from heimdall_stream.wire.messages import Localization

REPO = Path(__file__).resolve().parents[2]
CONTROL_KEY = "integration-test-control-key"


@pytest.fixture(scope="session")
def model_uri(mlflow_uri: str, tmp_path_factory) -> str:
    """A small trained features model registered under a session-unique name, @champion."""
    # Cached across sessions on this machine; the name changes whenever the model code does.
    sources = (
        "models/features.py",
        "models/tdoa.py",
        "lab/simulator.py",
        "lab/shift.py",
        "lab/training.py",
        "lab/training_data.py",
        "lab/localizer_graph.py",
        "lab/tdoa_grid.py",
        "lab/power_grid.py",
        "models/contract.py",
    )
    digest = hashlib.sha256(
        b"".join((REPO / "heimdall_stream" / f).read_bytes() for f in sources)
    ).hexdigest()[:8]
    cache = REPO / ".local-stack" / "cache" / f"test-model-1200-{digest}.onnx"
    if cache.exists():
        onnx_bytes = cache.read_bytes()
    else:
        onnx_bytes, _report = train_features_model(
            load_network(), n_train=1200, n_calibration=300, n_test=300
        )
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_bytes(onnx_bytes)
    name = f"it_localization_{uuid.uuid4().hex[:8]}"
    register_onnx(mlflow_uri, onnx_bytes, name, "champion", run_name="integration-tests")
    return f"models:/{name}@champion"


@pytest.fixture
def make_settings(services, model_uri, new_topic, new_group_id, tmp_path) -> Callable[..., Settings]:
    """Settings on fresh topics, a fresh group, a fresh Redis key prefix and model cache."""
    topics: dict[str, str] = {}

    def make(**overrides: Any) -> Settings:
        if not topics:
            topics.update(
                input_topic=new_topic("captures", partitions=3),
                output_topic=new_topic("localizations", partitions=3),
                dlq_topic=new_topic("dlq", partitions=1),
                control_topic=new_topic("control", partitions=1, config={"cleanup.policy": "compact"}),
                status_topic=new_topic("status", partitions=1, config={"cleanup.policy": "compact"}),
            )
        kafka = {
            "bootstrap_servers": services.kafka,
            "group_id": topics.setdefault("group", new_group_id()),
            **{k: v for k, v in topics.items() if k != "group"},
            **overrides.pop("kafka", {}),
        }
        values: dict[str, Any] = {
            "instance_id": overrides.pop("instance_id", f"it-{uuid.uuid4().hex[:6]}"),
            "kafka": kafka,
            "redis": {
                "url": services.redis,
                "key_prefix": f"it:{topics['input_topic']}:",
                "retry_interval_s": 0.5,
                **overrides.pop("redis", {}),
            },
            "mlflow": {"tracking_uri": services.mlflow, "cache_dir": str(tmp_path / "models")},
            "model": {"uri": model_uri, "control_hmac_key": CONTROL_KEY, **overrides.pop("model", {})},
            "metrics": {"host": "127.0.0.1", "port": 0},
            "batching": {"max_batch_size": 16, "max_wait_ms": 20, **overrides.pop("batching", {})},
            **overrides,
        }
        return Settings(**values)

    return make


class ServiceThread:
    """A service's ``run(stop)`` on a thread of this process; what it raised is kept for the test."""

    def __init__(self, service: Any) -> None:
        self.service = service
        self.stop_event = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.service.run(self.stop_event)
        except BaseException as exc:
            self.error = exc


class ConsumerThread(ServiceThread):
    """A consumer running in this process (metrics inspectable, stopped cleanly)."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(ConsumerService(settings))

    def metric(self, name: str, **labels: str) -> float:
        value = self.service.registry.get_sample_value(name, labels or None)
        return 0.0 if value is None else value

    def metric_sum(self, name: str) -> float:
        """A sample summed over all its label values (e.g. results of every model version)."""
        return sum(
            sample.value
            for family in self.service.registry.collect()
            for sample in family.samples
            if sample.name == name
        )

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ok, _ = self.service.health.ready()
            if ok:
                return
            if self.error:
                raise self.error
            time.sleep(0.1)
        raise TimeoutError("consumer not ready")

    def stop(self, timeout: float = 60) -> None:
        self.stop_event.set()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "consumer did not stop in time"
        if self.error:
            raise self.error


@pytest.fixture
def start_consumer() -> Iterator[Callable[[Settings], ConsumerThread]]:
    started: list[ConsumerThread] = []

    def start(settings: Settings) -> ConsumerThread:
        consumer = ConsumerThread(settings)
        started.append(consumer)
        consumer.wait_ready()
        return consumer

    yield start
    for consumer in started:
        if consumer.thread.is_alive():
            consumer.stop_event.set()
            consumer.thread.join(30)


def settings_env(settings: Settings) -> dict[str, str]:
    """HEIMDALL_* variables that rebuild ``settings`` in a child process."""

    def text(item: Any) -> str:
        if isinstance(item, SecretStr):
            return item.get_secret_value()
        return json.dumps(item) if isinstance(item, dict | list) else str(item)

    env: dict[str, str] = {}
    for key, value in settings.model_dump().items():
        if isinstance(value, dict):
            for inner, item in value.items():
                if item is not None:
                    env[f"HEIMDALL_{key.upper()}__{inner.upper()}"] = text(item)
        elif value is not None:
            env[f"HEIMDALL_{key.upper()}"] = text(value)
    return env


class ConsumerProcess:
    """``heimdall-stream run`` in a child process, for kill and restart tests."""

    def __init__(self, settings: Settings, log_path: Path) -> None:
        self.settings = settings
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ConsumerProcess:
        # Only the settings: nothing may depend on variables the test process happens to have.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HEIMDALL_", "MLFLOW_"))}
        env.update(settings_env(self.settings))
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "heimdall_stream.cli", "run"], env=env, stdout=log, stderr=log
            )
        return self

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def terminate(self, timeout: float = 60) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def send_captures(settings: Settings, count: int, **plan: Any) -> dict[str, dict[str, Any]]:
    """Publish simulated captures to the input topic; return the truth by capture_id."""
    producer = Producer(
        {
            "bootstrap.servers": settings.kafka.bootstrap_servers,
            "enable.idempotence": True,
            "message.max.bytes": 16 * 1024 * 1024,
            "linger.ms": 5,
        }
    )
    truth: dict[str, dict[str, Any]] = {}

    def remember(out: Any) -> None:
        if out.truth is not None:
            truth[out.truth["capture_id"]] = out.truth

    plan.setdefault("id_prefix", f"t{uuid.uuid4().hex[:6]}")
    publish(
        producer,
        settings.kafka.input_topic,
        load_network(),
        SimulationPlan(count=count, **plan),
        on_sent=remember,
    )
    return truth


def wait_for(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> float:
    """Poll ``condition`` until it holds; return when (monotonic).  ``timeout`` only bounds a hang:
    size it for a machine several times slower than a developer's."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return time.monotonic()
        time.sleep(interval)
    raise TimeoutError(f"{what} (waited {timeout:.0f} s)")


class CaptureStream:
    """Captures sent on a background thread, chunk after chunk, until ``stop()``.

    For tests where an event (a swap, a kill, an outage) must fall inside the stream: a fixed
    count sent at a fixed rate races the event, and on a slow machine the stream may end before
    it.  This one runs until the test has seen what it waits for.  Each chunk is one
    ``send_captures`` call with its own ``id_prefix``, so every capture id is unique; ``truth``
    grows by a chunk at a time (``chunk_seconds`` of traffic at ``rate``).
    """

    def __init__(self, settings: Settings, *, rate: float, chunk_seconds: float = 2.0, **plan: Any) -> None:
        self.settings = settings
        self.rate = rate
        self.chunk = max(1, round(rate * chunk_seconds))
        self.plan = plan
        self.prefix = plan.pop("id_prefix", f"s{uuid.uuid4().hex[:6]}")
        self.truth: dict[str, dict[str, Any]] = {}
        self.chunks = 0
        self.error: BaseException | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                prefix = f"{self.prefix}c{self.chunks}"
                sent = send_captures(self.settings, self.chunk, rate=self.rate, id_prefix=prefix, **self.plan)
                with self._lock:
                    self.truth.update(sent)
                    self.chunks += 1
        except BaseException as exc:
            self.error = exc

    @property
    def sent(self) -> int:
        """Captures sent and delivered so far (whole chunks)."""
        with self._lock:
            return len(self.truth)

    def stop(self, timeout: float = 180) -> dict[str, dict[str, Any]]:
        """Finish the chunk in progress, stop, and return the truth of every capture sent."""
        self._stop.set()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the capture stream did not stop in time"
        if self.error is not None:
            raise self.error
        with self._lock:
            return dict(self.truth)


@pytest.fixture
def start_stream() -> Iterator[Callable[..., CaptureStream]]:
    """Factory of ``CaptureStream``s; any still running at teardown is stopped."""
    streams: list[CaptureStream] = []

    def start(settings: Settings, **kwargs: Any) -> CaptureStream:
        stream = CaptureStream(settings, **kwargs)
        streams.append(stream)
        return stream

    yield start
    for stream in streams:
        stream._stop.set()
    for stream in streams:
        stream.thread.join(180)


_ADMINS: dict[str, Any] = {}


def _admin(bootstrap: str) -> Any:
    """One AdminClient per broker for the polling helpers (a client per call is slow and noisy)."""
    from confluent_kafka.admin import AdminClient

    if bootstrap not in _ADMINS:
        _ADMINS[bootstrap] = AdminClient({"bootstrap.servers": bootstrap})
    return _ADMINS[bootstrap]


def committed_offsets(settings: Settings) -> dict[int, int]:
    """The consumer group's committed offset per input partition (0 where none yet).

    Committed offsets move only when a transaction commits: for a consumer in a child process
    they are the sign that it is processing.
    """
    from confluent_kafka import ConsumerGroupTopicPartitions

    kafka = settings.kafka
    admin = _admin(kafka.bootstrap_servers)
    request = [ConsumerGroupTopicPartitions(kafka.group_id)]
    answer = admin.list_consumer_group_offsets(request)[kafka.group_id].result(timeout=30)
    return {
        tp.partition: max(tp.offset, 0)
        for tp in answer.topic_partitions
        if tp.topic == kafka.input_topic and tp.error is None
    }


def group_assignment(settings: Settings) -> dict[str, set[int]]:
    """Input partitions held by each member of the consumer group, by the member's client id."""
    kafka = settings.kafka
    admin = _admin(kafka.bootstrap_servers)
    try:
        group = admin.describe_consumer_groups([kafka.group_id])[kafka.group_id].result(timeout=30)
    except KafkaException:  # no such group yet
        return {}
    held = {m.client_id: m.assignment.topic_partitions for m in group.members}
    return {c: {tp.partition for tp in tps if tp.topic == kafka.input_topic} for c, tps in held.items()}


def read_topic(
    bootstrap: str,
    topic: str,
    *,
    expected: int,
    timeout: float = 60,
    idle: float = 3.0,
    read_committed: bool = True,
    options: dict[str, str] | None = None,
) -> list[Any]:
    """All messages of a topic from the beginning: until ``expected`` arrived and ``idle`` s passed.

    ``options`` adds librdkafka settings (e.g. SASL/TLS for a secured broker).
    """
    consumer = Consumer(
        {
            **(options or {}),
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "isolation.level": "read_committed" if read_committed else "read_uncommitted",
        }
    )
    consumer.subscribe([topic])
    messages: list[Any] = []
    deadline = time.monotonic() + timeout
    last = time.monotonic()
    try:
        while time.monotonic() < deadline:
            message = consumer.poll(0.25)
            if message is None:
                if len(messages) >= expected and time.monotonic() - last > idle:
                    break
                continue
            if message.error() is None:
                messages.append(message)
                last = time.monotonic()
    finally:
        consumer.close()
    return messages


def results_of(messages: list[Any]) -> list[Localization]:
    return [localization_codec().decode(m.value()) for m in messages]


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return resp.read().decode()
