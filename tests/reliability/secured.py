"""The secured stack of the security tests: Kafka on SASL_SSL with ACLs, Redis on TLS.

One stack per session and size (``secure_stack``), shared by test_security.py and test_acls.py,
so every security test runs twice: on one broker, and on three brokers (replication factor 3,
``min.insync.replicas=2``) whose consumer reaches them through the fault proxy.  The stack
script generates a test CA, a server certificate and random passwords in a fresh state
directory, creates the principals and enforces ACLs on every node.  Every ``heimdall-stream`` command runs as
a child process configured only through ``HEIMDALL_*`` variables, as an operator would run it,
under the principal of its role (``as_role``).
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient

from tests.conftest import load_stack_module, unavailable
from tests.helpers import run_cli
from tests.integration.conftest import CONTROL_KEY, wait_for
from tests.reliability.cluster_fixture import require_toxiproxy

SECURE_SERVICES = ["kafka", "redis"]


@pytest.fixture(scope="session", params=[1, 3], ids=["one-broker", "three-brokers"])
def secure_stack(request, tmp_path_factory):
    """Kafka (one or three brokers) and Redis of the session's own, secured.

    Yields the stack module, its paths and the settings of its env file.
    """
    brokers = request.param
    if os.environ.get("HEIMDALL_TEST_KAFKA"):
        pytest.skip("the secured stack runs local processes; this session uses external services")
    stack = load_stack_module()
    missing = stack.missing_for_secure(SECURE_SERVICES)
    if missing:
        unavailable("; ".join(what for what, _ in missing), ", ".join(how for _, how in missing))
    if brokers > 1:
        require_toxiproxy(stack)
    shared = stack.Paths.from_env()
    paths = stack.Paths(state=tmp_path_factory.mktemp(f"secure-stack-{brokers}"), cache=shared.cache)
    started = time.monotonic()
    stack.up(paths, SECURE_SERVICES, secure=True, brokers=brokers if brokers > 1 else None)
    print(
        f"secured Kafka ({brokers} broker{'s' if brokers > 1 else ''}) + Redis "
        f"(certificates, users, ACLs) up in {time.monotonic() - started:.1f} s"
    )
    env = dict(line.split("=", 1) for line in paths.env_file.read_text().splitlines() if "=" in line)
    try:
        yield stack, paths, env
    finally:
        try:
            print(f"secured Kafka at the end of its tests: {kafka_rss_mb(stack, paths)}")
        finally:
            stack.down(paths, SECURE_SERVICES)


def kafka_rss_mb(stack: Any, paths: Any) -> str:
    """The resident memory of each Kafka process of the stack, e.g. ``kafka-1 402 MB, …``."""
    names = (
        [f"kafka-{node}" for node in stack.cluster.node_ids(paths)]
        if stack.cluster.size(paths) > 1
        else ["kafka"]
    )
    sizes = []
    for name in names:
        pid = stack.read_pid(paths, name)
        if pid is None:
            continue
        try:
            lines = Path(f"/proc/{pid}/status").read_text().splitlines()
        except OSError:  # gone already
            continue
        # A zombie has no VmRSS line.
        kb = next((int(line.split()[1]) for line in lines if line.startswith("VmRSS:")), None)
        if kb is not None:
            sizes.append(f"{name} {kb // 1024} MB")
    return ", ".join(sizes) or "no process"


def free_port() -> int:
    """A loopback port nobody listens on (for a consumer's metrics server)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def command_env(stack_env: dict[str, str], services, model_uri: str, tmp_path: Path, **extra: str):
    """The environment of a heimdall-stream child process: the secured stack's settings only.

    Fresh topic, group and instance names per call; the credentials are the consumer's.
    """
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
            "HEIMDALL_METRICS__PORT": str(free_port()),
            **extra,
        }
    )
    return env


def as_role(env: dict[str, str], stack: Any, paths: Any, role: str) -> dict[str, str]:
    """``env`` with the Kafka credentials of another principal: operator, simulator or admin."""
    options = stack.kafka_client_options(paths, admin=role == "admin", role=role)
    return {
        **env,
        "HEIMDALL_KAFKA__SASL_USERNAME": options["sasl.username"],
        "HEIMDALL_KAFKA__SASL_PASSWORD": options["sasl.password"],
    }


def provision(env: dict[str, str], stack: Any, paths: Any) -> None:
    """Create the topics of ``env`` (as the super user) and grant the ACLs for their names.

    Checks that every partition of them has a replica on every broker of the stack, so the
    three-broker run really exercises replicated topics.
    """
    stack.authorize(paths, stack.acls.Names.from_env(env))
    topics = cli(as_role(env, stack, paths, "admin"), "topics", "--partitions", "3")
    assert topics.returncode == 0, topics.stderr
    admin = AdminClient(
        {
            "bootstrap.servers": env["HEIMDALL_KAFKA__BOOTSTRAP_SERVERS"],
            **stack.kafka_client_options(paths, admin=True),
        }
    )
    names = [
        value for key, value in env.items() if key.startswith("HEIMDALL_KAFKA__") and key.endswith("_TOPIC")
    ]

    def replicas() -> tuple[dict[tuple[str, int], int], int]:
        metadata = admin.list_topics(timeout=30)
        counts = {
            (name, partition.id): len(partition.replicas)
            for name in names
            if name in metadata.topics
            for partition in metadata.topics[name].partitions.values()
        }
        return counts, len(metadata.brokers)

    # The broker that answers may not have every new topic in its metadata yet.
    wait_for(lambda: {name for name, _ in replicas()[0]} == set(names), 60, "the new topics in the metadata")
    counts, brokers = replicas()
    assert set(counts.values()) == {brokers}, counts


def cli(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``heimdall-stream ARGS`` in ``env`` and capture what it prints."""
    return run_cli(*args, env=env, timeout=timeout)
