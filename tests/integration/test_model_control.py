"""Control plane on real Kafka and MLflow: weighted sticky routing, hot swap, rejections, status."""

from __future__ import annotations

import dataclasses
import signal
import time
from collections import Counter, defaultdict

import numpy as np
import pytest
from confluent_kafka import Producer

from heimdall_stream.control.operator import (
    live_instances,
    parse_versions,
    publish_deployment,
    statuses,
    wait_applied,
)
from heimdall_stream.control.protocol import signed
from heimdall_stream.lab.reference import register_onnx
from heimdall_stream.models.registry import ModelRef, ModelRegistry
from heimdall_stream.models.routing import route_point
from heimdall_stream.wire.codec import deployment_codec
from heimdall_stream.wire.messages import ModelDeployment, WeightedVersion
from tests.helpers import features_contract, tiny_features_model
from tests.integration.conftest import read_topic, results_of, send_captures, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def versions(mlflow_uri, model_uri, tmp_path_factory):
    """v1 (champion), v2 (a second version of the same weights), v3 (breaks the contract)."""
    name = ModelRef.parse(model_uri).name
    path = ModelRegistry(mlflow_uri, tmp_path_factory.mktemp("reg")).fetch(model_uri).path
    v2 = register_onnx(mlflow_uri, path.read_bytes(), name, "challenger", run_name="v2")
    wrong = features_contract(feature_names=("power_dbfs",), feature_mean=(0.0,), feature_std=(1.0,))
    broken = tiny_features_model()  # graph has 9 features, contract below says 1
    import onnx

    model = onnx.load_from_string(broken)
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, {"heimdall.contract": wrong.to_json()})
    v3 = register_onnx(mlflow_uri, model.SerializeToString(), name, "broken", run_name="v3")
    return name, f"models:/{name}/1", f"models:/{name}/{v2.version}", f"models:/{name}/{v3.version}"


def _wait_generation(consumer, generation, timeout=180):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if consumer.service.health.ready()[1].get("generation") == generation:
            return time.monotonic()
        time.sleep(0.1)
    raise TimeoutError(f"generation {generation} not applied")


def test_weighted_split_is_sticky_and_promotion_loses_and_duplicates_nothing(
    make_settings, start_consumer, start_stream, versions
):
    name, v1, v2, _ = versions
    settings = make_settings()
    consumer = start_consumer(settings)
    published = time.monotonic()
    first = publish_deployment(settings, name, parse_versions((f"{v1}=0.9", f"{v2}=0.1")), (), "test")
    applied_at = _wait_generation(consumer, first.generation)
    print(f"publish → applied: {applied_at - published:.2f} s")

    truth = send_captures(settings, 400, pool=20, seed=41)
    results = results_of(
        read_topic(settings.kafka.bootstrap_servers, settings.kafka.output_topic, expected=400, timeout=180)
    )
    assert len(results) == 400
    version2 = v2.rsplit("/", 1)[1]
    share = sum(r.model_version == version2 for r in results) / len(results)
    assert 0.05 < share < 0.15, f"v2 got {share:.1%} of the traffic, expected 10 %"
    for r in results:  # sticky: the route is a function of capture_id
        expected = version2 if route_point(r.capture_id) >= 0.9 else "1"
        assert r.model_version == expected

    steady_truth = send_captures(settings, 200, pool=20, rate=60, seed=46)
    steady_results = results_of(
        read_topic(settings.kafka.bootstrap_servers, settings.kafka.output_topic, expected=600, timeout=120)
    )
    steady = [r.timings.end_to_end_ms for r in steady_results if r.capture_id in steady_truth]
    truth.update(steady_truth)

    def produced() -> dict[str, float]:
        return {
            v: consumer.metric("heimdall_results_produced_total", model_version=v) for v in ("1", version2)
        }

    # The promotion must fall inside the stream, and enough must follow it to fill every output
    # partition's tail: captures keep coming until then, however slow the machine.
    before = sum(produced().values())
    stream = start_stream(settings, rate=60, pool=20, seed=42)
    wait_for(lambda: sum(produced().values()) >= before + 120, 120, "the stream is not being served")
    second = publish_deployment(settings, name, parse_versions((f"{v2}=1",)), (), "test")
    _wait_generation(consumer, second.generation, timeout=180)
    after_swap = produced()[version2]
    wait_for(lambda: produced()[version2] >= after_swap + 150, 180, "v2 did not take the traffic")
    more = stream.stop()
    messages = read_topic(
        settings.kafka.bootstrap_servers,
        settings.kafka.output_topic,
        expected=len(truth) + len(more),
        timeout=180,
    )
    all_results = results_of(messages)
    consumer.stop()
    counts = Counter(r.capture_id for r in all_results)
    assert set(counts) == set(truth) | set(more), "captures lost across the swap"
    assert max(counts.values()) == 1, "captures duplicated across the swap"
    batches = defaultdict(set)
    for r in all_results:
        batches[r.lineage.batch_id].add(r.model_version)
    assert all(len(v) == 1 for v in batches.values()), "an inference batch mixed versions"
    swap = [r.timings.end_to_end_ms for r in all_results if r.capture_id in more]
    print(f"p99 steady {np.percentile(steady, 99):.0f} ms, during swap {np.percentile(swap, 99):.0f} ms")
    # Every output partition ends with v2 results (so do the last ones read, whatever the order).
    tails = defaultdict(list)
    for message, r in zip(messages, all_results, strict=True):
        tails[message.partition()].append(r.model_version)
    assert all(set(v[-20:]) == {version2} for v in tails.values()), {
        p: Counter(v[-20:]) for p, v in tails.items()
    }
    assert all(r.model_version == version2 for r in all_results[-20:])


def test_bad_deployments_are_rejected_and_the_old_state_keeps_serving(
    make_settings, start_consumer, versions
):
    name, v1, v2, v3 = versions
    settings = make_settings()
    consumer = start_consumer(settings)
    good = publish_deployment(settings, name, parse_versions((f"{v1}=1",)), (), "test")
    _wait_generation(consumer, good.generation)

    for uri in (f"models:/{name}/999", v3):
        bad = publish_deployment(settings, name, (WeightedVersion(uri, 1.0),), (), "test")
        _, errors = wait_applied(settings, name, bad.generation, timeout_s=120)
        assert errors and all("not applied" in e for e in errors.values()), errors
    assert consumer.service.health.ready()[1]["generation"] == good.generation

    producer = Producer({"bootstrap.servers": settings.kafka.bootstrap_servers})
    forged = signed(
        ModelDeployment(name, good.generation + 10, (WeightedVersion(v2, 1.0),), "mallory", good.issued_at),
        b"not-the-key",
    )
    stale = signed(
        dataclasses.replace(forged, generation=good.generation, signature=""), b"integration-test-control-key"
    )
    for message in (forged, stale):
        producer.produce(
            settings.kafka.control_topic, key=name.encode(), value=deployment_codec().encode(message)
        )
    producer.produce(settings.kafka.control_topic, key=name.encode(), value=b"garbage")
    producer.flush(10)
    # The three are read in order: once the last one is counted, so are the others.
    wait_for(
        lambda: consumer.metric("heimdall_control_rejections_total", reason="malformed") >= 1,
        120,
        "the garbage control message was not rejected",
    )
    assert consumer.metric("heimdall_control_rejections_total", reason="bad_signature") == 1
    assert consumer.metric("heimdall_control_rejections_total", reason="stale") == 1
    assert consumer.metric("heimdall_control_rejections_total", reason="malformed") == 1
    assert consumer.service.health.ready()[1]["generation"] == good.generation
    send_captures(settings, 10, seed=43)
    results = results_of(
        read_topic(settings.kafka.bootstrap_servers, settings.kafka.output_topic, expected=10)
    )
    consumer.stop()
    assert {r.model_version for r in results} == {"1"}
    report = statuses(settings)[settings.instance_id]
    assert report.generation == good.generation and report.error


def test_two_instances_converge_and_shadows_are_scored_not_emitted(make_settings, start_consumer, versions):
    name, v1, v2, _ = versions
    settings = make_settings()
    first = start_consumer(settings)
    second = start_consumer(settings.model_copy(update={"instance_id": settings.instance_id + "-b"}))
    # wait_applied waits for the group's live members: both must have joined, or it may settle
    # for the first one alone.
    both = {settings.instance_id, settings.instance_id + "-b"}
    wait_for(lambda: live_instances(settings) == both, 120, "both instances did not join the group")
    deployment = publish_deployment(settings, name, parse_versions((f"{v1}=1",)), (v2,), "test")
    applied, errors = wait_applied(settings, name, deployment.generation, timeout_s=90)
    assert applied == {settings.instance_id, settings.instance_id + "-b"} and not errors
    send_captures(settings, 40, seed=44)
    results = results_of(
        read_topic(settings.kafka.bootstrap_servers, settings.kafka.output_topic, expected=40)
    )
    version2 = v2.rsplit("/", 1)[1]

    def shadow_count() -> float:
        return sum(
            c.metric("heimdall_shadow_position_delta_meters_count", model_version=version2)
            for c in (first, second)
        )

    # Shadow comparisons are recorded just after their batch's commit, which readers may see first.
    wait_for(lambda: shadow_count() >= 40, 60, "the shadow comparisons were not recorded")
    counted = shadow_count()
    first.stop()
    second.stop()
    assert len(results) == 40 and {r.model_version for r in results} == {"1"}
    # Counted once per committed capture, even when a rebalance made a batch run twice.
    assert counted == 40


def test_a_restart_while_mlflow_is_down_serves_from_the_cache(services, make_settings, start_consumer):
    if services.provider.get("mlflow") != "local":
        pytest.skip("needs the local stack to stop MLflow")
    settings = make_settings()
    start_consumer(settings).stop()  # fills the on-disk model cache
    services.stop("mlflow")
    try:
        consumer = start_consumer(settings)
        ok, detail = consumer.service.health.ready()
        assert ok and detail["model_from_cache"] is True
        assert consumer.metric("heimdall_model_served_from_cache") == 1
        send_captures(settings, 5, seed=45)
        results = results_of(
            read_topic(settings.kafka.bootstrap_servers, settings.kafka.output_topic, expected=5)
        )
        consumer.stop()
        assert len(results) == 5
    finally:
        services.start("mlflow")


def test_sighup_re_resolves_a_moved_alias(make_settings, versions, mlflow_uri, tmp_path):
    from mlflow import MlflowClient

    from tests.integration.conftest import ConsumerProcess

    name, _v1, v2, _ = versions
    alias = f"moving-{tmp_path.name[-6:]}"
    client = MlflowClient(mlflow_uri)
    client.set_registered_model_alias(name, alias, "1")
    settings = make_settings(model={"uri": f"models:/{name}@{alias}"})
    consumer = ConsumerProcess(settings, tmp_path / "consumer.log").start()
    try:
        # Up (its SIGHUP handler installed, its control plane reporting) before the signal.
        wait_for(lambda: settings.instance_id in statuses(settings), 180, "the consumer never reported")
        client.set_registered_model_alias(name, alias, v2.rsplit("/", 1)[1])
        consumer.proc.send_signal(signal.SIGHUP)
        version2 = v2.rsplit("/", 1)[1]

        def moved() -> bool:
            report = statuses(settings).get(settings.instance_id)
            return report is not None and report.versions[0].version == version2

        wait_for(moved, 180, "SIGHUP did not re-resolve the moved alias", interval=0.5)
        send_captures(settings, 5, seed=47)
        results = results_of(
            read_topic(settings.kafka.bootstrap_servers, settings.kafka.output_topic, expected=5)
        )
        assert {r.model_version for r in results} == {version2}
    finally:
        assert consumer.terminate() == 0


def test_deploy_and_status_commands(make_settings, start_consumer, versions):
    from click.testing import CliRunner

    from heimdall_stream.cli import main
    from tests.integration.conftest import settings_env

    name, v1, _v2, _ = versions
    settings = make_settings()
    start_consumer(settings)
    env = settings_env(settings)
    runner = CliRunner()
    deployed = runner.invoke(
        main, ["deploy", "--model", name, "--version", f"{v1}=1", "--timeout", "60"], env=env
    )
    assert deployed.exit_code == 0, deployed.output
    assert "1 instance(s) applied generation 1" in deployed.output
    shown = runner.invoke(main, ["status"], env=env)
    assert shown.exit_code == 0, shown.output
    assert f"{settings.instance_id} [live] {name} generation 1" in shown.output
    unsigned = runner.invoke(
        main,
        ["deploy", "--model", name, "--version", f"{v1}=1"],
        env={**env, "HEIMDALL_MODEL__CONTROL_HMAC_KEY": ""},
    )
    assert unsigned.exit_code == 2 and "CONTROL_HMAC_KEY is needed" in unsigned.output
