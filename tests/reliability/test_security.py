"""A secured stack: Kafka on SASL_SSL (SCRAM-SHA-512), Redis on TLS with a password.

The stack script generates a test CA, a server certificate and random passwords in a fresh
state directory when this module starts, and tears it all down at the end.  Every
``heimdall-stream`` command here runs as a child process configured only through ``HEIMDALL_*``
variables, as an operator would run it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections import Counter
from pathlib import Path

import pytest

from heimdall_stream.models.registry import ModelRef
from tests.conftest import load_stack_module, unavailable
from tests.integration.conftest import CONTROL_KEY, read_topic, results_of, wait_for

pytestmark = [pytest.mark.reliability, pytest.mark.slow]
SECURE_SERVICES = ["kafka", "redis"]


@pytest.fixture(scope="module")
def secure_stack(tmp_path_factory):
    """Kafka and Redis of this module's own, secured; yields the stack paths and its env."""
    if os.environ.get("HEIMDALL_TEST_KAFKA"):
        pytest.skip("the secured stack runs local processes; this session uses external services")
    stack = load_stack_module()
    missing = stack.missing_for_secure(SECURE_SERVICES)
    if missing:
        unavailable("; ".join(what for what, _ in missing), ", ".join(how for _, how in missing))
    shared = stack.Paths.from_env()
    paths = stack.Paths(state=tmp_path_factory.mktemp("secure-stack"), cache=shared.cache)
    started = time.monotonic()
    stack.up(paths, SECURE_SERVICES, secure=True)
    print(f"secured Kafka + Redis (certificates generated) up in {time.monotonic() - started:.1f} s")
    env = dict(line.split("=", 1) for line in paths.env_file.read_text().splitlines() if "=" in line)
    try:
        yield stack, paths, env
    finally:
        stack.down(paths, SECURE_SERVICES)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _command_env(stack_env: dict[str, str], services, model_uri: str, tmp_path: Path, **extra: str):
    """The environment of a heimdall-stream child process: the secured stack's settings only."""
    run = uuid.uuid4().hex[:8]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HEIMDALL_", "MLFLOW_"))}
    env.update({k: v for k, v in stack_env.items() if k.startswith("HEIMDALL_") and "_TEST_" not in k})
    env.update(
        {
            "HEIMDALL_MLFLOW__TRACKING_URI": services.mlflow,
            "HEIMDALL_MLFLOW__CACHE_DIR": str(tmp_path / "models"),
            "HEIMDALL_MODEL__URI": model_uri,
            "HEIMDALL_MODEL__CONTROL_HMAC_KEY": CONTROL_KEY,
            "HEIMDALL_KAFKA__INPUT_TOPIC": f"sec-captures-{run}",
            "HEIMDALL_KAFKA__OUTPUT_TOPIC": f"sec-localizations-{run}",
            "HEIMDALL_KAFKA__DLQ_TOPIC": f"sec-dlq-{run}",
            "HEIMDALL_KAFKA__CONTROL_TOPIC": f"sec-control-{run}",
            "HEIMDALL_KAFKA__STATUS_TOPIC": f"sec-status-{run}",
            "HEIMDALL_KAFKA__GROUP_ID": f"sec-group-{run}",
            "HEIMDALL_REDIS__KEY_PREFIX": f"sec:{run}:",
            "HEIMDALL_INSTANCE_ID": f"sec-{run}",
            "HEIMDALL_METRICS__HOST": "127.0.0.1",
            "HEIMDALL_METRICS__PORT": str(_free_port()),
            **extra,
        }
    )
    return env


def _cli(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "heimdall_stream.cli", *args],
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def _get(port: int, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
        return resp.read().decode()


def test_consumer_simulator_and_deploy_cli_work_over_sasl_ssl_and_tls_redis(
    secure_stack, services, model_uri, tmp_path
):
    stack, paths, stack_env = secure_stack
    env = _command_env(stack_env, services, model_uri, tmp_path)
    secrets = [v for k, v in env.items() if k.endswith(("_PASSWORD", "_HMAC_KEY"))]
    assert len(secrets) == 3

    topics = _cli(env, "topics", "--partitions", "3")
    assert topics.returncode == 0, topics.stderr

    log_path = tmp_path / "consumer.log"
    with log_path.open("wb") as log:
        consumer = subprocess.Popen(
            [sys.executable, "-m", "heimdall_stream.cli", "run"], env=env, stdout=log, stderr=log
        )
    try:
        sent = _cli(env, "simulate", "--count", "60", "--duplicates", "0.2", "--malformed", "0.05")
        assert sent.returncode == 0, sent.stderr
        kafka_options = stack.kafka_client_options(paths)
        results = results_of(
            read_topic(
                env["HEIMDALL_KAFKA__BOOTSTRAP_SERVERS"],
                env["HEIMDALL_KAFKA__OUTPUT_TOPIC"],
                expected=60,
                timeout=120,
                options=kafka_options,
            )
        )
        counts = Counter(r.capture_id for r in results)
        assert len(counts) == 60 and max(counts.values()) == 1, "lost or duplicated over SASL_SSL"

        name = ModelRef.parse(model_uri).name
        deployed = _cli(env, "deploy", "--model", name, "--version", f"models:/{name}/1=1", "--timeout", "90")
        assert deployed.returncode == 0, deployed.stderr
        assert "1 instance(s) applied generation 1" in deployed.stdout
        status = _cli(env, "status")
        assert status.returncode == 0 and "generation 1" in status.stdout

        port = int(env["HEIMDALL_METRICS__PORT"])

        def dedup_hits() -> float:
            lines = _get(port, "/metrics").splitlines()
            hits = [line for line in lines if line.startswith("heimdall_dedup_hits_total ")]
            return float(hits[0].split()[1]) if hits else 0.0

        # A duplicate is counted when its batch is done, which may come after the last result.
        wait_for(lambda: dedup_hits() > 0, 120, "no duplicate was suppressed through Redis")
        metrics, ready = _get(port, "/metrics"), _get(port, "/readyz")
        assert "heimdall_redis_up 1.0" in metrics, "the consumer did not reach Redis over TLS"
    finally:
        consumer.terminate()
        assert consumer.wait(60) == 0
    output = log_path.read_text() + sent.stdout + sent.stderr + deployed.stdout + deployed.stderr
    for secret in secrets:
        for where, text in (("log", output), ("/metrics", metrics), ("/readyz", ready)):
            assert secret not in text, f"a secret appears in the {where}"


@pytest.mark.parametrize(
    "case",
    [
        ("HEIMDALL_KAFKA__SASL_PASSWORD", "not-the-password", "refused the credentials of user 'heimdall'"),
        ("HEIMDALL_KAFKA__SASL_USERNAME", "nobody", "refused the credentials of user 'nobody'"),
        ("HEIMDALL_KAFKA__SSL_CA_LOCATION", "/etc/ssl/certs/ca-certificates.crt", "TLS handshake"),
        ("HEIMDALL_REDIS__PASSWORD", "not-the-password", "Redis refused the credentials"),
    ],
    ids=["kafka-password", "kafka-user", "kafka-ca", "redis-password"],
)
def test_wrong_credentials_stop_start_up_with_a_clear_error(
    secure_stack, services, model_uri, tmp_path, case
):
    setting, value, expected = case
    _, _, stack_env = secure_stack
    env = _command_env(stack_env, services, model_uri, tmp_path, **{setting: value})
    if value.startswith("/") and not Path(value).exists():
        unavailable(f"{value}, a CA bundle that does not sign the test CA", "apt-get install ca-certificates")
    if setting.startswith("HEIMDALL_REDIS"):  # Kafka accepts us: start-up gets as far as Redis
        assert _cli(env, "topics").returncode == 0
    started = time.monotonic()
    run = _cli(env, "run", timeout=90)
    took = time.monotonic() - started
    print(f"{setting}: exit {run.returncode} after {took:.1f} s")
    assert run.returncode == 2, run.stderr[-2000:]
    assert expected in run.stderr, run.stderr[-2000:]
    assert "Traceback" not in run.stderr
    assert value not in run.stderr or not setting.endswith("PASSWORD")
    if setting.startswith("HEIMDALL_KAFKA"):
        simulate = _cli(env, "simulate", "--count", "1", timeout=90)
        assert simulate.returncode == 2 and expected in simulate.stderr, simulate.stderr[-2000:]
