"""Session-wide fixtures: real Kafka, Redis and MLflow, and per-test isolation.

Each service is resolved once per session, in this order:

1. an address in ``HEIMDALL_TEST_KAFKA`` / ``HEIMDALL_TEST_REDIS`` / ``HEIMDALL_TEST_MLFLOW``;
2. a testcontainers container, when a Docker engine answers;
3. the local process stack of ``deploy/local/stack.py`` (started here if it is not up, and
   stopped at the end of the session only if this session started it).

Unit tests request none of these fixtures and so need no service at all.  Every test that
touches Kafka takes fresh topic names and group ids from the factory fixtures below.

A test that needs something only a system package gives (``promtool``, ``openssl``, a
``redis-server`` built with TLS) calls :func:`unavailable` when it is missing: the test is
skipped, and with ``HEIMDALL_REQUIRE_ALL=1`` (which ``.ci/run`` sets) it fails instead.  The end
of the run lists every test skipped with a reason that starts with "unavailable: " (those of
:func:`unavailable` and plain skips written that way) and what would make it run.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, NoReturn

import pytest

REPO = Path(__file__).resolve().parents[1]
SERVICES = ("kafka", "redis", "mlflow")
ENV_VARS = {"kafka": "HEIMDALL_TEST_KAFKA", "redis": "HEIMDALL_TEST_REDIS", "mlflow": "HEIMDALL_TEST_MLFLOW"}


UNAVAILABLE = "unavailable: "
REQUIRE_ALL = "HEIMDALL_REQUIRE_ALL"


def unavailable(what: str, install: str) -> NoReturn:
    """Skip a test that needs ``what``, which this machine lacks; under HEIMDALL_REQUIRE_ALL=1, fail it."""
    message = f"{what}; to run it: {install}"
    if os.environ.get(REQUIRE_ALL) == "1":
        pytest.fail(f"{message}; {REQUIRE_ALL}=1 requires every test to run", pytrace=False)
    pytest.skip(UNAVAILABLE + message)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Under HEIMDALL_REQUIRE_ALL=1, a plain ``pytest.skip("unavailable: ...")`` fails the test too.

    :func:`unavailable` fails by itself; this catches the tests that skip with the same
    convention directly, so CI can never pass with a test it did not run.
    """
    outcome = yield
    report: pytest.TestReport = outcome.get_result()  # type: ignore[attr-defined]
    if os.environ.get(REQUIRE_ALL) != "1" or not report.skipped:
        return
    reason = _skip_reason(report)
    if reason.startswith(UNAVAILABLE):
        report.outcome = "failed"
        report.longrepr = f"{reason.removeprefix(UNAVAILABLE)}; {REQUIRE_ALL}=1 requires every test to run"


def _skip_reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    reason = str(longrepr[2]) if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    return reason.removeprefix("Skipped: ")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """List, at the end of the run, every test skipped because the machine lacks something.

    That is every skip whose reason starts with "unavailable: ", whether :func:`unavailable` or a
    plain ``pytest.skip`` wrote it.
    """
    by_reason: dict[str, list[str]] = {}
    for report in terminalreporter.stats.get("skipped", []):
        reason = _skip_reason(report)
        if reason.startswith(UNAVAILABLE):
            by_reason.setdefault(reason.removeprefix(UNAVAILABLE), []).append(report.nodeid)
    if not by_reason:
        return
    count = sum(len(ids) for ids in by_reason.values())
    noun = "test" if count == 1 else "tests"
    terminalreporter.section(f"{count} {noun} this machine could not run", sep="=", yellow=True)
    for reason, nodeids in sorted(by_reason.items()):
        terminalreporter.line(reason)
        for nodeid in nodeids:
            terminalreporter.line(f"    {nodeid}")
    terminalreporter.line(f"(under {REQUIRE_ALL}=1, which .ci/run sets, each of these fails instead)")


def load_stack_module() -> ModuleType:
    """Import deploy/local/stack.py (it is a script, not part of the package)."""
    name = "heimdall_local_stack"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO / "deploy/local/stack.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


@dataclass
class Services:
    """Addresses of the real services this session uses, and who provides them."""

    kafka: str = ""
    redis: str = ""
    mlflow: str = ""
    provider: dict[str, str] = field(default_factory=dict)
    stack: ModuleType | None = None
    stack_paths: Any = None

    def restart(self, service: str, *, kill: bool = False) -> None:
        """Stop (or SIGKILL) and start one service of the local stack, for fault tests."""
        if self.provider.get(service) != "local":
            pytest.skip(f"{service} is not from the local stack; cannot restart it")
        self.stop(service, kill=kill)
        self.start(service)

    def stop(self, service: str, *, kill: bool = False) -> None:
        """Stop one local-stack service."""
        assert self.stack is not None
        import signal

        self.stack.down(self.stack_paths, [service], signal.SIGKILL if kill else signal.SIGTERM)

    def start(self, service: str) -> None:
        """Start one local-stack service again on its remembered port."""
        assert self.stack is not None
        self.stack.up(self.stack_paths, [service])


def _docker_answers() -> bool:
    try:
        import docker

        docker.from_env(timeout=2).ping()
        return True
    except Exception:
        return False


def _from_containers(services: Services, wanted: list[str], stack: contextlib.ExitStack) -> None:
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.waiting_utils import wait_for_logs
    from testcontainers.kafka import KafkaContainer
    from testcontainers.redis import RedisContainer

    if "kafka" in wanted:
        kafka = stack.enter_context(KafkaContainer("apache/kafka:4.1.1").with_kraft())
        services.kafka = kafka.get_bootstrap_server()
    if "redis" in wanted:
        redis = stack.enter_context(RedisContainer("redis:7"))
        services.redis = f"redis://{redis.get_container_host_ip()}:{redis.get_exposed_port(6379)}/0"
    if "mlflow" in wanted:
        mlflow = DockerContainer("ghcr.io/mlflow/mlflow:v3.1.0").with_exposed_ports(5000)
        mlflow = mlflow.with_command("mlflow server --host 0.0.0.0 --port 5000")
        stack.enter_context(mlflow)
        wait_for_logs(mlflow, "Uvicorn running|Listening at", timeout=120)
        services.mlflow = f"http://{mlflow.get_container_host_ip()}:{mlflow.get_exposed_port(5000)}"
    for name in wanted:
        services.provider[name] = "testcontainers"


def _from_local_stack(services: Services, wanted: list[str]) -> list[str]:
    stack = load_stack_module()
    paths = stack.Paths.from_env()
    already = [s for s in wanted if stack.read_pid(paths, s) is not None]
    stack.up(paths, wanted)
    env = dict(line.split("=", 1) for line in paths.env_file.read_text().splitlines() if "=" in line)
    for name in wanted:
        setattr(services, name, env[ENV_VARS[name]])
        services.provider[name] = "local"
    services.stack, services.stack_paths = stack, paths
    return [s for s in wanted if s not in already]


@contextlib.contextmanager
def _uncaptured(config: pytest.Config) -> Iterator[None]:
    """Let the stack's status lines reach the terminal while it starts (it can take a minute)."""
    capture = config.pluginmanager.getplugin("capturemanager")
    if capture is None:
        yield
        return
    with capture.global_and_fixture_disabled():
        print(file=sys.stderr)  # off the line of progress dots
        yield


@pytest.fixture(scope="session")
def services(request: pytest.FixtureRequest) -> Iterator[Services]:
    """Real Kafka, Redis and MLflow for the whole session."""
    found = Services()
    for name in SERVICES:
        value = os.environ.get(ENV_VARS[name])
        if value:
            setattr(found, name, value)
            found.provider[name] = "env"
    missing = [s for s in SERVICES if s not in found.provider]
    started: list[str] = []
    with contextlib.ExitStack() as containers:
        if missing and os.environ.get("HEIMDALL_TEST_NO_DOCKER") != "1" and _docker_answers():
            _from_containers(found, missing, containers)
        elif missing:
            with _uncaptured(request.config):
                started = _from_local_stack(found, missing)
        if found.stack is None:
            with contextlib.suppress(Exception):
                stack = load_stack_module()
                found.stack, found.stack_paths = stack, stack.Paths.from_env()
        try:
            yield found
        finally:
            if started and found.stack is not None:
                found.stack.down(found.stack_paths, started)


@pytest.fixture(scope="session")
def kafka_bootstrap(services: Services) -> str:
    """bootstrap.servers of the real broker."""
    return services.kafka


@pytest.fixture(scope="session")
def redis_url(services: Services) -> str:
    """URL of the real Redis."""
    return services.redis


@pytest.fixture(scope="session")
def mlflow_uri(services: Services) -> str:
    """Tracking URI of the real MLflow server."""
    return services.mlflow


@pytest.fixture(scope="session")
def kafka_admin(kafka_bootstrap: str) -> Any:
    """An AdminClient on the session's broker."""
    from confluent_kafka.admin import AdminClient

    return AdminClient({"bootstrap.servers": kafka_bootstrap})


@pytest.fixture
def new_topic(kafka_admin: Any) -> Iterator[Callable[..., str]]:
    """Factory of fresh topics (unique names), deleted after the test."""
    from confluent_kafka.admin import NewTopic

    created: list[str] = []

    def make(prefix: str = "test", partitions: int = 3, config: dict[str, str] | None = None) -> str:
        name = f"{prefix}.{uuid.uuid4().hex[:12]}"
        futures = kafka_admin.create_topics(
            [NewTopic(name, num_partitions=partitions, replication_factor=1, config=config or {})]
        )
        futures[name].result(timeout=30)
        created.append(name)
        _wait_for_metadata(kafka_admin, name, partitions)
        return name

    yield make
    if created:
        with contextlib.suppress(Exception):
            for future in kafka_admin.delete_topics(created).values():
                future.result(timeout=30)


def _wait_for_metadata(admin: Any, topic: str, partitions: int, timeout_s: float = 60.0) -> None:
    """Wait until the broker serves the new topic with a leader for every partition.

    The controller answers ``create_topics`` before every broker's metadata cache has the topic;
    on a loaded machine a consumer that starts at once can still be told it does not exist.
    """

    deadline = time.monotonic() + timeout_s
    while True:
        meta = admin.list_topics(topic, timeout=10).topics.get(topic)
        if (
            meta is not None
            and meta.error is None
            and len(meta.partitions) == partitions
            and all(p.leader >= 0 for p in meta.partitions.values())
        ):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"topic {topic} not served with {partitions} partitions after {timeout_s} s")
        time.sleep(0.1)


@pytest.fixture
def new_group_id() -> Callable[[str], str]:
    """Factory of fresh consumer group ids."""

    def make(prefix: str = "group") -> str:
        return f"{prefix}-{uuid.uuid4().hex[:12]}"

    return make
