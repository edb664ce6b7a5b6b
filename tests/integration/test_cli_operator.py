"""What an operator sees when a service is missing: one line saying what to set, and an exit code.

The Kafka cases need no broker at all: they point at a loopback port nobody listens on.  Each
command runs as a real process; the subprocess timeout is only a generous bound (the command
must end by itself, told by its exit code and message, not by how fast it was).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from tests.helpers import run_cli

BOUND_S = 120  # far above HEIMDALL_KAFKA__CONNECT_TIMEOUT_S below plus start-up on a slow machine


def closed_port() -> int:
    """A loopback port with nothing listening on it (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cli_env(**settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEIMDALL_")}
    env.update({"HEIMDALL_METRICS__PORT": "0", **settings})
    return env


def heimdall(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, env=env, timeout=BOUND_S)


@pytest.mark.parametrize("command", [["run"], ["topics"], ["status"], ["simulate", "--count", "1"]])
def test_an_unreachable_kafka_names_the_variable_and_the_address(command: list[str]) -> None:
    address = f"127.0.0.1:{closed_port()}"
    env = cli_env(HEIMDALL_KAFKA__BOOTSTRAP_SERVERS=address, HEIMDALL_KAFKA__CONNECT_TIMEOUT_S="2")
    done = heimdall(*command, env=env)
    assert done.returncode == 2, done.stderr
    error = done.stderr.splitlines()[-1]
    assert error.startswith(f"error: cannot reach Kafka at {address} within 2 s: "), error
    assert "set HEIMDALL_KAFKA__BOOTSTRAP_SERVERS" in error and "Connection refused" in error
    # No librdkafka chatter: nothing but the service's own log lines and the error.
    assert not [line for line in done.stderr.splitlines() if line.startswith("%")], done.stderr
    assert len(done.stderr.splitlines()) <= 5, done.stderr
    assert "Traceback" not in done.stderr


def test_under_json_logs_every_line_but_the_error_is_json() -> None:
    address = f"127.0.0.1:{closed_port()}"
    env = cli_env(
        HEIMDALL_KAFKA__BOOTSTRAP_SERVERS=address,
        HEIMDALL_KAFKA__CONNECT_TIMEOUT_S="2",
        HEIMDALL_LOG_FORMAT="json",
        HEIMDALL_LOG_LEVEL="DEBUG",
    )
    done = heimdall("run", env=env)
    assert done.returncode == 2, done.stderr
    *logged, error = done.stderr.splitlines()
    assert logged and all(json.loads(line)["level"] for line in logged), done.stderr
    assert error.startswith(f"error: cannot reach Kafka at {address}")


PROBE = textwrap.dedent(
    """
    import logging, sys, time
    from confluent_kafka import Consumer
    from heimdall_stream.clients import consumer_config
    from heimdall_stream.config import load_settings
    from heimdall_stream.logs import LIBRDKAFKA_LOGGER, setup_logging

    settings = load_settings()
    setup_logging(settings.log_level, settings.log_format)
    seen = []

    class Count(logging.Handler):
        def emit(self, record):
            seen.append(record)

    logging.getLogger(LIBRDKAFKA_LOGGER).addHandler(Count())
    consumer = Consumer(consumer_config(settings))
    consumer.subscribe([settings.kafka.input_topic])
    polls = 0
    deadline = time.monotonic() + 90
    # Until librdkafka has said something, and then a few more polls of failed connections.
    while time.monotonic() < deadline and (not seen or polls < 10):
        consumer.poll(0.2)
        polls += 1 if seen else 0
    consumer.close()
    logging.getLogger("probe").info("librdkafka records passed: %d", len(seen))
    """
)


def test_a_consumer_of_a_dead_broker_writes_only_json_lines(tmp_path: Path) -> None:
    address = f"127.0.0.1:{closed_port()}"
    env = cli_env(
        HEIMDALL_KAFKA__BOOTSTRAP_SERVERS=address,
        HEIMDALL_LOG_FORMAT="json",
        HEIMDALL_KAFKA__GROUP_ID=f"probe-{uuid.uuid4().hex}",
    )
    done = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=BOUND_S, check=False
    )
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    entries = [json.loads(line) for line in lines]  # every line parses, or this fails
    from_librdkafka = [e for e in entries if e["logger"] == "heimdall.librdkafka"]
    assert from_librdkafka, done.stderr
    assert all(e["facility"] and "#consumer-" in e["client"] for e in from_librdkafka)
    assert any(address in e["message"] for e in from_librdkafka)
    # librdkafka retried the connection many times; the same failure was logged once per window.
    refused = [e for e in from_librdkafka if "Connection refused" in e["message"]]
    assert len(refused) <= 2, refused


@pytest.mark.parametrize("reference", ["@champion", "/3"])
def test_a_missing_model_suggests_train_reference(mlflow_uri: str, reference: str) -> None:
    uri = f"models:/no-such-model-{uuid.uuid4().hex[:8]}{reference}"
    done = heimdall("check-model", uri, env=cli_env(HEIMDALL_MLFLOW__TRACKING_URI=mlflow_uri))
    assert done.returncode == 2, done.stderr
    message = done.stderr.splitlines()[-1]
    assert message.startswith(f"refused: registry has no {uri} (MLflow at {mlflow_uri}): "), message
    assert "`heimdall-stream train-reference`" in message and "HEIMDALL_MODEL__URI" in message
    assert "ModelRef(" not in done.stderr and "Traceback" not in done.stderr


def test_a_cached_version_of_another_registry_is_fetched_anew(mlflow_uri: str, tmp_path: Path) -> None:
    # A stack re-created from scratch numbers its versions from 1 again: the on-disk cache,
    # keyed by name and version, then holds a valid entry of the *old* version 1.
    import hashlib

    from onnx import TensorProto, helper

    from heimdall_stream.lab.reference import register_onnx
    from heimdall_stream.models.registry import ModelRegistry

    def tiny(label: str) -> bytes:
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
        graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], label, [x], [y])
        return bytes(helper.make_model(graph).SerializeToString())

    name = f"it_cache_{uuid.uuid4().hex[:8]}"
    registered = register_onnx(mlflow_uri, tiny("current"), name, "champion", run_name="integration-tests")
    registry = ModelRegistry(mlflow_uri, tmp_path)
    entry = registry.fetch(f"models:/{name}@champion").path.parent
    foreign = tiny("from-another-registry")
    (entry / "model.onnx").write_bytes(foreign)
    manifest = json.loads((entry / "manifest.json").read_text())
    manifest["sha256"] = hashlib.sha256(foreign).hexdigest()  # self-consistent, but not this one
    (entry / "manifest.json").write_text(json.dumps(manifest))

    again = registry.fetch(f"models:/{name}/{registered.version}")
    assert again.sha256 == registered.sha256 and not again.from_cache
