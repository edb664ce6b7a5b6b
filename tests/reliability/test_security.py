"""A secured stack: Kafka on SASL_SSL (SCRAM-SHA-512) with ACLs, Redis on TLS with a password.

The stack (``tests.reliability.secured``) generates a test CA, a server certificate and random
passwords in a fresh state directory and enforces least-privilege ACLs; each command runs as
the principal of its role: topics as the super user, the consumer as ``heimdall``, simulate
as ``heimdall-simulator``, deploy and status as ``heimdall-operator``.
"""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

from heimdall_stream.models.registry import ModelRef
from tests.conftest import unavailable
from tests.integration.conftest import read_topic, results_of, wait_for
from tests.reliability.secured import as_role, cli, command_env, provision

pytestmark = [pytest.mark.reliability, pytest.mark.slow]


def _get(port: int, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
        return resp.read().decode()


def test_consumer_simulator_and_deploy_cli_work_over_sasl_ssl_and_tls_redis(
    secure_stack, services, model_uri, tmp_path
):
    stack, paths, stack_env = secure_stack
    env = command_env(stack_env, services, model_uri, tmp_path)
    secrets = [v for k, v in env.items() if k.endswith(("_PASSWORD", "_HMAC_KEY"))]
    assert len(secrets) == 3
    provision(env, stack, paths)
    operator = as_role(env, stack, paths, "operator")

    log_path = tmp_path / "consumer.log"
    with log_path.open("wb") as log:
        consumer = subprocess.Popen(
            [sys.executable, "-m", "heimdall_stream.cli", "run"], env=env, stdout=log, stderr=log
        )
    try:
        simulator = as_role(env, stack, paths, "simulator")
        sent = cli(simulator, "simulate", "--count", "60", "--duplicates", "0.2", "--malformed", "0.05")
        assert sent.returncode == 0, sent.stderr
        kafka_options = stack.kafka_client_options(paths, admin=True)  # the checker reads anything
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
        version = f"models:/{name}/1=1"
        deployed = cli(operator, "deploy", "--model", name, "--version", version, "--timeout", "90")
        assert deployed.returncode == 0, deployed.stderr
        assert "1 instance(s) applied generation 1" in deployed.stdout
        status = cli(operator, "status")
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
    stack, paths, stack_env = secure_stack
    env = command_env(stack_env, services, model_uri, tmp_path, **{setting: value})
    if value.startswith("/") and not Path(value).exists():
        unavailable(f"{value}, a CA bundle that does not sign the test CA", "apt-get install ca-certificates")
    if setting.startswith("HEIMDALL_REDIS"):  # Kafka accepts us: start-up gets as far as Redis
        provision(env, stack, paths)
    started = time.monotonic()
    run = cli(env, "run", timeout=90)
    took = time.monotonic() - started
    print(f"{setting}: exit {run.returncode} after {took:.1f} s")
    assert run.returncode == 2, run.stderr[-2000:]
    assert expected in run.stderr, run.stderr[-2000:]
    assert "Traceback" not in run.stderr
    assert value not in run.stderr or not setting.endswith("PASSWORD")
    if setting.startswith("HEIMDALL_KAFKA"):
        simulate = cli(env, "simulate", "--count", "1", timeout=90)
        assert simulate.returncode == 2 and expected in simulate.stderr, simulate.stderr[-2000:]
