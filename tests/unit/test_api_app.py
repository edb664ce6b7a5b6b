"""The predict API's routes on real (tiny) ONNX models and the in-memory store, without services.

What the stream would dead-letter, the API refuses with the same reason; answers follow the
stream's routing; pins, batches, limits and metrics.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import shapely.geometry
from prometheus_client import CollectorRegistry

from heimdall_stream.api.app import PredictApi
from heimdall_stream.api.batcher import RequestBatcher
from heimdall_stream.api.bodies import (
    AVRO_CAPTURE,
    AVRO_CAPTURE_BATCH,
    AVRO_LOCALIZATION,
    capture_json,
    join_frames,
)
from heimdall_stream.api.metrics import ApiMetrics
from heimdall_stream.api.scoring import Scorer
from heimdall_stream.config import Settings
from heimdall_stream.lab.faults import FAULTS
from heimdall_stream.lab.simulator import IqSimulator
from heimdall_stream.metrics import Metrics
from heimdall_stream.models.inference import load_model
from heimdall_stream.models.registry import file_sha256
from heimdall_stream.models.routing import ModelSet, route_point
from heimdall_stream.processing.cache import ResultCache
from heimdall_stream.processing.dedup import Deduplicator
from heimdall_stream.processing.processor import BatchProcessor
from heimdall_stream.processing.records import InputRecord
from heimdall_stream.processing.store import InMemoryStore
from heimdall_stream.wire.codec import capture_codec, localization_codec
from tests.helpers import NETWORK, tiny_features_model

# starlette's TestClient announces a future move away from httpx; the server side does not use it.
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient


def _load(tmp_path_factory, version: str):
    path = tmp_path_factory.mktemp(f"api{version}") / "model.onnx"
    path.write_bytes(tiny_features_model())
    return load_model(
        path, name="tiny", version=version, uri=f"models:/tiny/{version}", sha256=file_sha256(path)
    )


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return _load(tmp_path_factory, "1"), _load(tmp_path_factory, "2")


@pytest.fixture(scope="module")
def captures():
    sim = IqSimulator(NETWORK, seed=3)
    return [sim.generate(i).capture for i in range(6)]


class Api:
    def __init__(self, model_set: ModelSet, **api: object) -> None:
        self.settings = Settings(api={"max_wait_ms": 0, **api})
        self.registry = CollectorRegistry()
        self.store = InMemoryStore()
        metrics = Metrics(self.registry)
        self.scorer = Scorer(lambda: model_set, self.store, metrics, self.settings)
        self.executor = ThreadPoolExecutor(1)
        api_metrics = ApiMetrics(self.registry)
        settings = self.settings.api

        def batcher() -> RequestBatcher:
            return RequestBatcher(
                self.scorer.score,
                self.executor,
                api_metrics,
                max_batch_size=settings.max_batch_size,
                max_wait_s=0.0,
                max_queue=settings.max_queue,
                workers=1,
            )

        self.client = TestClient(PredictApi(self.scorer, batcher, settings, api_metrics).app())

    def __enter__(self) -> TestClient:
        return self.client.__enter__()

    def __exit__(self, *exc: object) -> None:
        self.client.__exit__(*exc)
        self.executor.shutdown()

    def metric(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0


def test_one_capture_gets_its_localization_as_json_or_avro(models, captures) -> None:
    api = Api(ModelSet.single(models[0]))
    with api as client:
        answer = client.post(
            "/predict", content=capture_codec().encode(captures[0]), headers={"content-type": AVRO_CAPTURE}
        )
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["capture_id"] == captures[0].capture_id and body["model_version"] == "1"
        assert body["lineage"]["source_partition"] == -1 and body["lineage"]["batch_size"] == 1
        ellipse = next(f for f in body["geojson"]["features"] if f["properties"]["kind"] == "ellipse")
        polygon = shapely.geometry.shape(ellipse["geometry"])
        assert polygon.is_valid and polygon.contains(
            shapely.geometry.Point(body["longitude"], body["latitude"])
        )
        assert body["ellipse"]["confidence"] == 0.95 and body["geojson"]["type"] == "FeatureCollection"
        # the consistency check's score travels with the answer, as in the Localization record
        assert 0.0 <= body["quality"] <= 1.0

        as_json = client.post("/predict", json=capture_json(captures[0]))
        assert as_json.status_code == 200
        assert (as_json.json()["latitude"], as_json.json()["longitude"]) == (
            body["latitude"],
            body["longitude"],
        )
        assert as_json.json()["cache_hit"]  # the first answer filled the result cache

        avro = client.post("/predict", json=capture_json(captures[1]), headers={"accept": AVRO_LOCALIZATION})
        assert avro.headers["content-type"] == AVRO_LOCALIZATION
        decoded = localization_codec().decode(avro.content)
        assert decoded.capture_id == captures[1].capture_id and 0.0 <= decoded.quality <= 1.0
    assert api.metric("heimdall_api_requests_total", route="/predict", status="200") == 3
    assert api.metric("heimdall_api_captures_total", outcome="ok") == 3
    assert api.store.filter_done([c.capture_id for c in captures]) == set()  # never marked done


def test_bad_captures_get_the_reasons_the_stream_dead_letters_them_with(models, captures) -> None:
    model_set = ModelSet.single(models[0])
    rng = np.random.default_rng(7)
    faults = {name: make(captures[0], rng) for name, make in FAULTS.items()}
    metrics = Metrics(CollectorRegistry())
    store = InMemoryStore()
    stream = BatchProcessor(
        lambda: model_set,
        Deduplicator(store, 0, metrics),
        ResultCache(store),
        metrics,
        limits=Settings().limits,
        confidence=0.95,
        batch_prefix="s",
    )
    records = [InputRecord("in", 0, i, None, value, 0.0) for i, value in enumerate(faults.values())]
    dead = {letter.record.offset: letter.reason for letter in stream.process(records).dead_letters}
    expected = {name: dead[i] for i, name in enumerate(faults)}
    api = Api(model_set)
    with api as client:
        for name, value in faults.items():
            answer = client.post("/predict", content=value, headers={"content-type": AVRO_CAPTURE})
            error = answer.json()["error"]
            assert error["reason"] == expected[name], name
            assert error["message"]
            klass = error["class"]
            wanted = 413 if name == "oversized" else 400 if klass == "DecodeError" else 422
            assert answer.status_code == wanted, (name, answer.text)
        assert (
            client.post("/predict", content=b"{", headers={"content-type": "application/json"}).status_code
            == 400
        )
    assert api.metric("heimdall_api_requests_total", route="/predict", status="422") >= 2
    assert api.metric("heimdall_api_captures_total", outcome="unknown_receiver") == 1


def test_routing_follows_the_stream_and_a_pin_chooses_a_held_version(models, captures) -> None:
    model_set = ModelSet("tiny", 4, ((models[0], 0.5), (models[1], 0.5)))
    api = Api(model_set)
    with api as client:
        for capture in captures:
            version = client.post("/predict", json=capture_json(capture)).json()["model_version"]
            assert version == ("1" if route_point(capture.capture_id) < 0.5 else "2")
            for pin in ("2", "tiny/2", "models:/tiny/2"):
                pinned = client.post(f"/predict?model={pin}", json=capture_json(capture))
                assert pinned.json()["model_version"] == "2"
        missing = client.post("/predict", json={"capture": capture_json(captures[0]), "model": "9"})
        assert missing.status_code == 404 and missing.json()["error"]["reason"] == "model_not_served"
        listed = client.get("/models").json()
        assert listed["generation"] == 4 and [v["version"] for v in listed["versions"]] == ["1", "2"]


def test_a_batch_answers_each_capture_in_order(models, captures) -> None:
    api = Api(ModelSet.single(models[0]), max_request_captures=4)
    broken = dataclasses.replace(captures[1], receivers=())
    values = [capture_codec().encode(c) for c in (captures[0], broken, captures[2])] + [b"junk"]
    with api as client:
        answer = client.post(
            "/predict/batch", content=join_frames(values), headers={"content-type": AVRO_CAPTURE_BATCH}
        )
        assert answer.status_code == 200
        items = answer.json()["results"]
        assert [item["status"] for item in items] == [200, 422, 200, 400]
        assert items[0]["localization"]["capture_id"] == captures[0].capture_id
        assert items[1]["error"]["reason"] == "no_receivers"
        assert items[2]["localization"]["lineage"]["batch_size"] == 2  # both valid ones in one batch
        as_json = client.post("/predict/batch", json={"captures": [capture_json(c) for c in captures[:2]]})
        assert [item["status"] for item in as_json.json()["results"]] == [200, 200]
        too_many = client.post(
            "/predict/batch",
            content=join_frames(values + values),
            headers={"content-type": AVRO_CAPTURE_BATCH},
        )
        assert too_many.status_code == 413 and too_many.json()["error"]["reason"] == "too_many_captures"
        cut = client.post(
            "/predict/batch", content=join_frames(values)[:-2], headers={"content-type": AVRO_CAPTURE_BATCH}
        )
        assert cut.status_code == 400 and cut.json()["error"]["reason"] == "truncated"
    assert api.metric("heimdall_api_requests_total", route="/predict/batch", status="413") == 1


def test_a_body_over_the_limit_is_refused(models, captures) -> None:
    api = Api(ModelSet.single(models[0]), max_body_bytes=2048)
    with api as client:
        answer = client.post(
            "/predict", content=capture_codec().encode(captures[0]), headers={"content-type": AVRO_CAPTURE}
        )
        assert answer.status_code == 413 and answer.json()["error"]["reason"] == "body_too_large"
        assert json.loads(answer.text)["error"]["class"] == "RequestError"


def test_an_unanticipated_failure_is_a_500_with_reason_internal(models, captures) -> None:
    api = Api(ModelSet.single(models[0]))

    def broken(_jobs):
        raise RuntimeError("store exploded")

    api.scorer.score = broken  # type: ignore[method-assign]
    with api as client:
        answer = client.post("/predict", json=capture_json(captures[0]))
        assert answer.status_code == 500
        assert answer.json()["error"] == {
            "reason": "internal",
            "class": "RuntimeError",
            "message": "store exploded",
        }
    assert api.metric("heimdall_api_requests_total", route="/predict", status="500") == 1


def test_a_request_larger_than_the_queue_is_shed_with_429_and_counted(models, captures) -> None:
    api = Api(ModelSet.single(models[0]), max_queue=2)
    with api as client:
        answer = client.post("/predict/batch", json={"captures": [capture_json(c) for c in captures[:3]]})
        assert answer.status_code == 429 and answer.headers["retry-after"] == "1"
        assert answer.json()["error"]["reason"] == "queue_full"
    assert api.metric("heimdall_api_requests_total", route="/predict/batch", status="429") == 1
    assert api.metric("heimdall_api_captures_total", outcome="queue_full") == 1
