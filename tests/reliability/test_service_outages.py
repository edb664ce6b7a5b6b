"""MLflow and Redis go away while captures stream in: nothing is lost, the damage is counted.

* MLflow stopped during a control-plane change: the previous model set keeps serving, the
  status says the change is pending, and it completes by itself once MLflow is back.
* Redis restarted with an empty keyspace: no capture is lost; repeats of captures done before
  the restart are caught by the in-process memory and counted, and the restart itself is
  counted.  When that memory is gone too (a fresh consumer), the repeats that get through are
  exactly the re-sent captures, counted here from the output.
"""

from __future__ import annotations

import time
from collections import Counter

import pytest
import redis

from heimdall_stream.control.operator import publish_deployment, statuses
from heimdall_stream.lab.reference import register_onnx
from heimdall_stream.models.registry import ModelRef, ModelRegistry
from heimdall_stream.wire.messages import ApplyState, WeightedVersion
from tests.integration.conftest import read_topic, results_of, send_captures

pytestmark = [pytest.mark.reliability, pytest.mark.slow]


def _wait(condition, timeout: float, what: str) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return time.monotonic()
        time.sleep(0.2)
    raise TimeoutError(what)


def test_mlflow_down_during_a_deployment_keeps_serving_and_completes_when_back(
    services, make_settings, start_consumer, start_stream, tmp_path
):
    if services.provider.get("mlflow") != "local":
        pytest.skip("needs the local stack to stop and start MLflow")
    settings = make_settings()
    model_uri = settings.model.uri
    name = ModelRef.parse(model_uri).name
    path = ModelRegistry(services.mlflow, tmp_path / "reg").fetch(model_uri).path
    new = register_onnx(services.mlflow, path.read_bytes(), name, "outage-candidate", run_name="outage")
    new_version = str(new.version)
    consumer = start_consumer(settings)
    served_before = consumer.service.health.ready()[1].get("generation")

    def produced(version: str) -> float:
        return consumer.metric("heimdall_results_produced_total", model_version=version)

    # Captures keep coming until the new version has served some: however long MLflow takes to
    # stop and start and the pending deployment to be retried, the swap falls inside the stream.
    stream = start_stream(settings, rate=15, pool=20, seed=81)
    services.stop("mlflow")
    try:
        deployment = publish_deployment(
            settings, name, (WeightedVersion(f"models:/{name}/{new_version}", 1.0),), (), "outage-test"
        )

        def pending() -> bool:
            status = statuses(settings).get(settings.instance_id)
            return bool(status and status.state is ApplyState.PENDING)

        _wait(pending, 120, "no pending status while MLflow is down")
        status = statuses(settings)[settings.instance_id]
        assert status.requested_generation == deployment.generation
        assert status.generation == served_before, "the status must name the set still serving"
        # Captures keep flowing through the previous set meanwhile (about 6 s of the stream).
        while_pending = produced("1")
        _wait(
            lambda: produced("1") >= while_pending + 90,
            180,
            "the previous set stopped serving while the deployment was pending",
        )
        assert consumer.service.health.ready()[1].get("generation") == served_before
        assert consumer.service.health.ready()[0]
        assert pending(), "the deployment stopped being pending while MLflow was down"
    finally:
        services.start("mlflow")
    back = time.monotonic()
    applied = _wait(
        lambda: consumer.service.health.ready()[1].get("generation") == deployment.generation,
        180,
        "the pending deployment was not applied after MLflow came back",
    )
    print(f"MLflow back → pending generation applied: {applied - back:.1f} s")
    _wait(lambda: produced(new_version) >= 15, 180, "the new version served no capture")
    truth = stream.stop()
    results = results_of(
        read_topic(
            settings.kafka.bootstrap_servers, settings.kafka.output_topic, expected=len(truth), timeout=180
        )
    )
    final = statuses(settings)[settings.instance_id]
    consumer.stop()
    counts = Counter(r.capture_id for r in results)
    versions = Counter(r.model_version for r in results)
    print(f"{len(truth)} captures sent, results by model version: {dict(versions)}")
    assert set(counts) == set(truth), f"{len(set(truth) - set(counts))} captures lost"
    assert max(counts.values()) == 1
    assert versions["1"] > 0 and versions[new_version] > 0, versions
    assert final.error is None and final.generation == deployment.generation


def test_redis_restart_with_an_empty_keyspace_loses_nothing_and_counts_repeats(
    services, make_settings, start_consumer
):
    if services.provider.get("redis") != "local":
        pytest.skip("needs the local stack to restart Redis")
    settings = make_settings()
    bootstrap, output = settings.kafka.bootstrap_servers, settings.kafka.output_topic
    consumer = start_consumer(settings)
    first = send_captures(settings, 100, pool=20, seed=91, id_prefix="keyspace-a")
    assert len(read_topic(bootstrap, output, expected=100, idle=1, timeout=120)) == 100

    services.restart("redis")  # no persistence: every dedup mark and cache entry is gone
    client = redis.Redis.from_url(settings.redis.url)
    assert not list(client.scan_iter(f"{settings.redis.key_prefix}*")), "the keyspace survived"

    again = send_captures(settings, 100, pool=20, seed=91, id_prefix="keyspace-a")
    assert set(again) == set(first)
    fresh = send_captures(settings, 50, pool=20, seed=92, id_prefix="keyspace-b")
    messages = read_topic(bootstrap, output, expected=150, timeout=90)
    memory_hits = consumer.metric("heimdall_dedup_memory_hits_total")
    restarts = consumer.metric("heimdall_redis_restarts_total")
    consumer.stop()
    counts = Counter(r.capture_id for r in results_of(messages))
    assert set(counts) == set(first) | set(fresh), "captures lost across the Redis restart"
    duplicates = sum(n - 1 for n in counts.values())
    print(f"Redis restarted empty: {memory_hits:.0f} repeats caught in memory, {duplicates} duplicates")
    assert duplicates == 0 and memory_hits == 100
    assert restarts == 1, "the Redis restart was not noticed"

    # Both memories gone (new consumer, Redis emptied again): every repeat becomes a duplicate.
    services.restart("redis")
    consumer = start_consumer(settings)
    send_captures(settings, 30, pool=20, seed=91, id_prefix="keyspace-a")
    messages = read_topic(bootstrap, output, expected=180, timeout=90)
    consumer.stop()
    counts = Counter(r.capture_id for r in results_of(messages))
    duplicated = {cid for cid, n in counts.items() if n > 1}
    print(f"Redis and the consumer both restarted: {len(duplicated)} of 30 repeats duplicated")
    assert set(counts) == set(first) | set(fresh)
    assert len(duplicated) == 30 and duplicated <= set(first), "only re-sent captures may repeat"
