"""The predict API on real Kafka, Redis and an MLflow-registered model.

It answers what the stream answers for the same capture and version, refuses bad input with the
reasons the stream dead-letters it with, writes nothing to Kafka and marks nothing done, and
under overload sheds with 429/503 and ``Retry-After``, then recovers.
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import httpx
import numpy as np
import pytest
from confluent_kafka import Producer
from prometheus_client import CollectorRegistry

from heimdall_stream.api.bodies import AVRO_CAPTURE, capture_json
from heimdall_stream.api.server import ApiServer
from heimdall_stream.lab.faults import FAULTS
from heimdall_stream.lab.simulator import IqSimulator
from heimdall_stream.metrics import Metrics
from heimdall_stream.models.loading import load_version
from heimdall_stream.models.registry import ModelRegistry
from heimdall_stream.models.routing import ModelSet
from heimdall_stream.network import load_network
from heimdall_stream.processing.store import RedisStore
from heimdall_stream.wire.codec import capture_codec
from heimdall_stream.wire.messages import IqCapture
from tests.integration.conftest import read_topic, results_of, scrape, wait_for

pytestmark = pytest.mark.integration

API = {"enabled": True, "host": "127.0.0.1", "port": 0}


def captures(count: int, seed: int) -> list[IqCapture]:
    sim = IqSimulator(load_network(), seed=seed)
    prefix = uuid.uuid4().hex[:6]
    out = []
    for i in range(count):
        capture = sim.generate(i).capture
        out.append(
            IqCapture(
                f"api-{prefix}-{i}", capture.captured_at, capture.center_frequency_hz, capture.receivers
            )
        )
    return out


def produce(settings, items: list[tuple[bytes, bytes]]) -> None:
    producer = Producer(
        {"bootstrap.servers": settings.kafka.bootstrap_servers, "message.max.bytes": 16 << 20}
    )
    for key, value in items:
        producer.produce(settings.kafka.input_topic, key=key, value=value)
    assert producer.flush(60) == 0


def same_answer(api: dict[str, Any], stream) -> None:
    assert api["capture_id"] == stream.capture_id
    assert (api["model_name"], api["model_version"]) == (stream.model_name, stream.model_version)
    assert api["latitude"] == pytest.approx(stream.latitude, abs=1e-9)
    assert api["longitude"] == pytest.approx(stream.longitude, abs=1e-9)
    for field in ("sigma_east_m", "sigma_north_m", "rho"):
        assert api["covariance"][field] == pytest.approx(getattr(stream.covariance, field), rel=1e-6)
    assert api["ellipse"]["semi_major_m"] == pytest.approx(stream.ellipse.semi_major_m, rel=1e-6)
    kinds = [feature["properties"]["kind"] for feature in api["geojson"]["features"]]
    assert kinds == ["estimate", "ellipse"] and api["geojson"]["features"][1]["geometry"]["type"] == "Polygon"


def test_predict_answers_what_the_stream_answers_and_leaves_kafka_and_dedup_alone(
    make_settings, start_consumer
) -> None:
    settings = make_settings(api=API)
    consumer = start_consumer(settings)
    assert consumer.service.api is not None
    base = f"http://127.0.0.1:{consumer.service.api.port}"
    sample = captures(6, seed=11)
    rng = np.random.default_rng(5)
    faults = {name: make(sample[0], rng) for name, make in FAULTS.items()}
    with httpx.Client(base_url=base, timeout=60) as client:
        # Asked first through the API: the stream must still score these when they come by Kafka.
        early = {c.capture_id: client.post("/predict", json=capture_json(c)) for c in sample[:3]}
        assert all(answer.status_code == 200 for answer in early.values())
        produce(settings, [(c.capture_id.encode(), capture_codec().encode(c)) for c in sample])
        produce(settings, [(f"fault-{name}".encode(), value) for name, value in faults.items()])
        stream = {
            loc.capture_id: loc
            for loc in results_of(
                read_topic(settings.kafka.bootstrap_servers, settings.kafka.output_topic, expected=6)
            )
        }
        assert sorted(stream) == sorted(c.capture_id for c in sample)
        letters = read_topic(settings.kafka.bootstrap_servers, settings.kafka.dlq_topic, expected=len(faults))
        dlq = {m.key().decode(): dict(m.headers())["heimdall.error.reason"].decode() for m in letters}

        for capture in sample:
            one = client.post(
                "/predict", content=capture_codec().encode(capture), headers={"content-type": AVRO_CAPTURE}
            )
            assert one.status_code == 200, one.text
            same_answer(one.json(), stream[capture.capture_id])
        for capture_id, answer in early.items():
            same_answer(answer.json(), stream[capture_id])
        batch = client.post("/predict/batch", json={"captures": [capture_json(c) for c in sample]})
        assert [item["status"] for item in batch.json()["results"]] == [200] * len(sample)
        for item, capture in zip(batch.json()["results"], sample, strict=True):
            same_answer(item["localization"], stream[capture.capture_id])

        for name, value in faults.items():
            answer = client.post("/predict", content=value, headers={"content-type": AVRO_CAPTURE})
            assert answer.status_code in (400, 413, 422), (name, answer.text)
            assert answer.json()["error"]["reason"] == dlq[f"fault-{name}"], name
        pinned = client.post(
            f"/predict?model={stream[sample[0].capture_id].model_version}", json=capture_json(sample[0])
        )
        assert pinned.status_code == 200
        assert client.post("/predict?model=999", json=capture_json(sample[0])).status_code == 404

    # Nothing the API answered reached the output topic: exactly the stream's six results.
    again = read_topic(settings.kafka.bootstrap_servers, settings.kafka.output_topic, expected=6, idle=2.0)
    assert len(again) == 6
    text = scrape(consumer.service.port)
    assert 'heimdall_api_requests_total{route="/predict",status="200"}' in text
    assert 'heimdall_api_requests_total{route="/predict/batch",status="200"} 1.0' in text
    assert "heimdall_api_batch_size_bucket" in text
    assert (
        consumer.metric(
            "heimdall_results_produced_total", model_version=stream[sample[0].capture_id].model_version
        )
        == 6
    )


@pytest.fixture
def standalone_api(make_settings, model_uri):
    """An API server over the registered model and real Redis, without the stream (for overload)."""
    servers: list[ApiServer] = []

    def start(**api: Any) -> ApiServer:
        settings = make_settings(api={**API, **api})
        registry = CollectorRegistry()
        metrics = Metrics(registry)
        model, _ = load_version(
            ModelRegistry(settings.mlflow.tracking_uri, settings.mlflow.cache_dir), model_uri, settings
        )
        store = RedisStore(settings.redis, metrics)
        server = ApiServer(settings, lambda: ModelSet.single(model), store, metrics, registry)
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


class Requests:
    """Requests sent on threads; answers collected."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.answers: list[httpx.Response] = []
        self.threads: list[threading.Thread] = []

    def send(self, capture: IqCapture) -> None:
        def post() -> None:
            with httpx.Client(base_url=self.base, timeout=120) as client:
                self.answers.append(client.post("/predict", json=capture_json(capture)))

        thread = threading.Thread(target=post, daemon=True)
        thread.start()
        self.threads.append(thread)

    def join(self) -> list[httpx.Response]:
        for thread in self.threads:
            thread.join(120)
        return self.answers


def test_an_overloaded_api_sheds_with_429_and_503_then_recovers(standalone_api) -> None:
    server = standalone_api(workers=1, max_batch_size=1, max_queue=3, queue_timeout_ms=1000)
    base = f"http://127.0.0.1:{server.port}"
    sample = captures(6, seed=12)

    def value(metric: str, **labels: str) -> float:
        return server.registry.get_sample_value(metric, labels) or 0.0

    gate = threading.Event()
    server.executor.submit(gate.wait, 120)  # the only worker is busy until the gate opens
    requests = Requests(base)
    requests.send(sample[0])  # formed into a batch at once, which waits for the worker
    wait_for(lambda: value("heimdall_api_batch_size_count") == 1, 60, "the first batch formed")
    sent_at = time.monotonic()
    for capture in sample[1:4]:
        requests.send(capture)
    wait_for(lambda: value("heimdall_api_queued_captures") == 3, 60, "three captures queued")

    with httpx.Client(base_url=base, timeout=60) as client:
        full = client.post("/predict", json=capture_json(sample[4]))
        assert full.status_code == 429 and full.headers["retry-after"] == "1"
        assert full.json()["error"]["reason"] == "queue_full"
        # Every waiting capture is now older than the queue timeout: they are shed, not scored.
        wait_for(lambda: time.monotonic() - sent_at > 1.5, 10, "the queue timeout passed")
        gate.set()
        shed = requests.join()
        assert [answer.status_code for answer in shed] == [503] * 4
        assert all(
            a.headers["retry-after"] == "1" and a.json()["error"]["reason"] == "queue_timeout" for a in shed
        )
        recovered = client.post("/predict", json=capture_json(sample[5]))
        assert recovered.status_code == 200, recovered.text
    assert value("heimdall_api_requests_total", route="/predict", status="429") == 1
    assert value("heimdall_api_requests_total", route="/predict", status="503") == 4
    assert value("heimdall_api_requests_total", route="/predict", status="200") == 1


def test_a_stuck_api_does_not_hold_the_stream(make_settings, start_consumer) -> None:
    settings = make_settings(
        api={**API, "workers": 1, "max_batch_size": 1, "max_queue": 2, "queue_timeout_ms": 600_000}
    )
    consumer = start_consumer(settings)
    api = consumer.service.api
    assert api is not None
    gate = threading.Event()
    api.executor.submit(gate.wait, 300)  # the API's only worker is stuck
    requests = Requests(f"http://127.0.0.1:{api.port}")
    for capture in captures(3, seed=13):
        requests.send(capture)
    wait_for(lambda: api.registry.get_sample_value("heimdall_api_queued_captures") == 2, 60, "API queue full")
    try:
        sample = captures(20, seed=14)
        produce(settings, [(c.capture_id.encode(), capture_codec().encode(c)) for c in sample])
        wait_for(
            lambda: consumer.metric_sum("heimdall_results_produced_total") >= 20, 120, "the stream's results"
        )
        answered = results_of(
            read_topic(settings.kafka.bootstrap_servers, settings.kafka.output_topic, expected=20)
        )
        assert sorted(a.capture_id for a in answered) == sorted(c.capture_id for c in sample)
        assert not requests.answers  # the API's requests are all still waiting
    finally:
        gate.set()
    assert [a.status_code for a in requests.join()] == [200, 200, 200]
