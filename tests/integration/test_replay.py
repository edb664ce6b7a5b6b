"""``heimdall-stream replay`` on a real topic: a 5,000-capture range scored by two versions.

Exactly one answer per capture and version reaches the replay's own topic, none the live one;
an interrupted replay resumes where its saved progress says; the report measures each version
against the simulator's truth and against what the live service answered.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from confluent_kafka import Producer

from heimdall_stream.lab.publisher import SimulationPlan, publish
from heimdall_stream.lab.reference import register_onnx
from heimdall_stream.models.registry import ModelRef
from heimdall_stream.network import load_network
from heimdall_stream.replay.runner import ReplayJob, replay
from tests.helpers import tiny_features_model
from tests.integration.conftest import read_topic, results_of, settings_env, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CAPTURES = 5000


class StopReplayError(Exception):
    pass


@pytest.fixture(scope="module")
def naive_version(mlflow_uri, model_uri) -> str:
    """A second version of the test model's name: a constant guess near the network's centre."""
    name = ModelRef.parse(model_uri).name
    registered = register_onnx(mlflow_uri, tiny_features_model(), name, "naive", run_name="naive")
    return f"models:/{name}/{registered.version}"


def fill(settings, tmp_path) -> Any:
    """5,000 captures on the input topic (16 simulated transmissions re-sent, lz4 batches)."""
    producer = Producer(
        {
            "bootstrap.servers": settings.kafka.bootstrap_servers,
            "enable.idempotence": True,
            "compression.type": "lz4",
            "linger.ms": 50,
            "message.max.bytes": 16 << 20,
        }
    )
    truth = tmp_path / "truth.jsonl"
    with truth.open("w") as out:
        plan = SimulationPlan(count=CAPTURES, pool=16, id_prefix=f"r{uuid.uuid4().hex[:6]}")
        publish(producer, settings.kafka.input_topic, load_network(), plan, truth_file=out)
    return truth


def test_replay_of_a_range_writes_one_answer_per_capture_and_version_to_its_own_topic(
    make_settings, start_consumer, new_topic, *, model_uri, naive_version, tmp_path
) -> None:
    settings = make_settings()
    truth = fill(settings, tmp_path)
    # The live service answers part of the range (its answers are what the replay compares with).
    live = start_consumer(settings)
    wait_for(lambda: live.metric_sum("heimdall_results_produced_total") >= 300, 300, "live answers")
    live.stop()
    bootstrap = settings.kafka.bootstrap_servers
    live_before = len(read_topic(bootstrap, settings.kafka.output_topic, expected=300, idle=3.0))

    target = new_topic("replay", partitions=3)
    state = tmp_path / "progress.json"
    job = ReplayJob(
        "earliest",
        "latest",
        (model_uri, naive_version),
        output_topic=target,
        truth_file=truth,
        live_topic=settings.kafka.output_topic,
        state_file=state,
        chunk=200,
    )
    done = []

    def stop_midway(count: int, total: int) -> None:
        done.append(count)
        assert total >= CAPTURES
        if sum(done) >= 1000:
            raise StopReplayError  # after its chunk's answers were flushed and its progress saved

    with pytest.raises(StopReplayError):
        replay(settings, job, stop_midway)
    saved = json.loads(state.read_text())
    assert 1000 <= sum(int(o) for o in saved["next"].values()) < CAPTURES
    report = replay(settings, job)  # resumes from the saved progress

    answers = results_of(read_topic(bootstrap, target, expected=2 * CAPTURES, timeout=300, idle=5.0))
    per_version = Counter((a.model_version, a.capture_id) for a in answers)
    assert len(answers) == 2 * CAPTURES and set(per_version.values()) == {1}, "a capture answered twice"
    assert sorted(Counter(version for version, _ in per_version).values()) == [CAPTURES, CAPTURES]
    # Nothing went to the live output.
    assert (
        len(read_topic(bootstrap, settings.kafka.output_topic, expected=live_before, idle=3.0)) == live_before
    )

    versions = report["versions"]
    assert report["truth"] == CAPTURES and report["live_answers"] >= 300
    naive_label = naive_version.removeprefix("models:/")
    naive = versions[naive_label]
    [trained] = [figures for label, figures in versions.items() if label != naive_label]
    for figures in (trained, naive):
        assert figures["results"] == CAPTURES and figures["with_truth"] == CAPTURES
        assert figures["against_live"]["compared"] == report["live_answers"]
    # The trained version is the live one: it agrees with itself; the naive guess does not.
    assert trained["against_live"]["distance_m"]["median"] < 1.0
    assert trained["against_live"]["overlap"]["median"] > 0.99
    assert naive["against_live"]["distance_m"]["median"] > 100.0
    assert trained["error_m"]["median"] < naive["error_m"]["median"]
    # 16 distinct transmissions only: coverage moves in steps of 1/16, so compare, do not pin.
    assert trained["coverage"]["95"] > naive["coverage"]["95"]
    (tmp_path / "report.json").write_text(json.dumps(report, indent=2))


def test_the_replay_command_writes_a_file_and_refuses_the_live_output(
    make_settings, model_uri, tmp_path
) -> None:
    settings = make_settings()
    producer = Producer(
        {"bootstrap.servers": settings.kafka.bootstrap_servers, "message.max.bytes": 16 << 20}
    )
    publish(producer, settings.kafka.input_topic, load_network(), SimulationPlan(count=5, id_prefix="old"))
    # The range starts at a time between the two publications (timestamps are milliseconds).
    since = datetime.now(UTC) + timedelta(milliseconds=2)
    wait_for(lambda: datetime.now(UTC) > since + timedelta(milliseconds=3), 10, "clock", interval=0.001)
    publish(producer, settings.kafka.input_topic, load_network(), SimulationPlan(count=12, id_prefix="cmd"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HEIMDALL_", "MLFLOW_"))}
    env.update(settings_env(settings))
    command = [
        sys.executable,
        "-m",
        "heimdall_stream.cli",
        "replay",
        "--model",
        model_uri,
        "--from",
        since.isoformat(),
    ]
    refused = subprocess.run(
        [*command, "--output-topic", settings.kafka.output_topic],
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert refused.returncode == 2 and "never writes to" in refused.stderr
    out = tmp_path / "answers.jsonl"
    ran = subprocess.run(
        [*command, "--output", str(out), "--report", str(tmp_path / "r.json")],
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ran.returncode == 0, ran.stderr
    # Off a terminal the progress is plain lines on stderr: the step, then its end.
    assert "replaying 12 offsets of " in ran.stderr and ": done (12/12, " in ran.stderr, ran.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 12 and {line["localization"]["capture_id"] for line in lines} == {
        f"cmd-0-{i}" for i in range(12)
    }
    report = json.loads((tmp_path / "r.json").read_text())
    assert [v["results"] for v in report["versions"].values()] == [12]
