"""The three-broker cluster behind toxiproxy, once per session, and what tests do with it.

The cluster runs from its own state directory (``HEIMDALL_STACK_CLUSTER_DIR``, default the
stack directory with ``-cluster`` appended), so it never clashes with the single-broker stack of
the other tests; Redis and MLflow still come from the ``services`` fixture.  It is stopped at
the end of the session only if this session started it.

The consumer under test reaches the brokers only through the proxies (``proxied``); topic
creation, the capture producer and the result readers use the direct listeners (``direct``), so
a fault on the wire hits the consumer alone.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import struct
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from heimdall_stream.clients import ensure_topics
from heimdall_stream.config import Settings
from tests.conftest import _uncaptured, load_stack_module, unavailable
from tests.integration.conftest import CONTROL_KEY, wait_for

COORDINATOR_TRANSACTION = 1  # FindCoordinator key type of a transactional id


@dataclass
class Cluster:
    """A running three-node cluster: addresses, its proxy, and node kill/stop/start."""

    stack: Any
    paths: Any
    direct: str
    proxied: str
    toxiproxy: Any

    def node_ids(self) -> list[int]:
        """Kafka node ids of the cluster (1, 2, 3)."""
        return list(self.stack.cluster.node_ids(self.paths))

    def stop(self, node: int, *, kill: bool = False) -> None:
        """SIGKILL or SIGTERM one node and wait until its ports are closed."""
        self.stack.cluster.stop_one(self.paths, node, signal.SIGKILL if kill else signal.SIGTERM)

    def start(self, node: int) -> None:
        """Start one node again and wait until the cluster lists it."""
        self.stack.cluster.start_one(self.paths, node)

    def admin(self) -> Any:
        """An AdminClient on the direct listeners."""
        from confluent_kafka.admin import AdminClient

        return AdminClient({"bootstrap.servers": self.direct, "log_level": 0})

    def leader(self, topic: str, partition: int) -> int:
        """The node that leads one partition now."""
        metadata = self.admin().list_topics(topic, timeout=10)
        return int(metadata.topics[topic].partitions[partition].leader)

    def in_sync(self) -> bool:
        """Every partition of every topic, internal ones included, has all its replicas in sync."""
        metadata = self.admin().list_topics(timeout=10)
        nodes = set(self.node_ids())
        if set(metadata.brokers) != nodes:
            return False
        return all(
            p.leader >= 0 and sorted(p.isrs) == sorted(p.replicas)
            for t in metadata.topics.values()
            for p in t.partitions.values()
        )

    def wait_in_sync(self, timeout: float = 300) -> None:
        """Wait until no partition is under-replicated (before the next node may go down)."""
        wait_for(self.in_sync, timeout, "the cluster's replicas did not get back in sync", interval=0.5)

    def transaction_coordinator(self, transactional_id: str, timeout: float = 120) -> int:
        """The node coordinating a transactional id, from a FindCoordinator request."""
        found: list[int] = []

        def ask() -> bool:
            for address in self.direct.split(","):  # any live node answers for the cluster
                try:
                    node = find_coordinator(address, transactional_id, COORDINATOR_TRANSACTION)
                except OSError:
                    continue
                if node is not None:
                    found.append(node)
                    return True
            return False

        wait_for(ask, timeout, f"no transaction coordinator for {transactional_id}", interval=0.5)
        return found[-1]

    def heal(self) -> None:
        """Remove every toxic and enable every proxy."""
        self.toxiproxy.reset()

    def add_toxic(
        self, kind: str, attributes: dict[str, Any], *, streams: tuple[str, ...] = ("downstream",)
    ) -> None:
        """The same toxic on the proxy of every node, in each of ``streams``."""
        for node in self.node_ids():
            for stream in streams:
                self.toxiproxy.add_toxic(f"kafka-{node}", kind, attributes, stream=stream)


def find_coordinator(bootstrap: str, key: str, key_type: int) -> int | None:
    """Send FindCoordinator (v2) to one broker; the coordinator's node id, None while unknown.

    librdkafka does not expose the coordinator it found, and the admin API of confluent-kafka
    has no describe-transactions call: the request is small enough to send by hand.
    """
    host, port = bootstrap.rsplit(":", 1)
    client = b"heimdall-tests"
    header = struct.pack(">hhih", 10, 2, 1, len(client)) + client
    body = struct.pack(">h", len(key.encode())) + key.encode() + struct.pack(">b", key_type)
    request = header + body
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(struct.pack(">i", len(request)) + request)
        size = struct.unpack(">i", _recv(sock, 4))[0]
        answer = _recv(sock, size)
    # correlation id, throttle time, error code, error message (nullable string)
    _correlation, _throttle, error, message_len = struct.unpack(">iihh", answer[:12])
    offset = 12 + max(message_len, 0)
    node = struct.unpack(">i", answer[offset : offset + 4])[0]
    return None if error != 0 else int(node)


def _recv(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("the broker closed the connection")
        data += chunk
    return data


@pytest.fixture(scope="session")
def cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """The three-node cluster and its proxy, started once per session (own state directory)."""
    stack = load_stack_module()
    from stacklib.toxiproxy import Toxiproxy  # on sys.path once the stack module is loaded

    require_toxiproxy(stack)
    base = stack.Paths.from_env()
    state = Path(os.environ.get("HEIMDALL_STACK_CLUSTER_DIR", f"{base.state}-cluster")).resolve()
    paths = stack.Paths(state=state, cache=base.cache)
    already = stack.read_pid(paths, "kafka-1") is not None
    with _uncaptured(request.config):
        started = time.monotonic()
        stack.up(paths, ["kafka"], brokers=3)
        print(f"[cluster] three nodes and toxiproxy ready in {time.monotonic() - started:.1f} s", flush=True)
    env = dict(line.split("=", 1) for line in paths.env_file.read_text().splitlines() if "=" in line)

    found = Cluster(
        stack=stack,
        paths=paths,
        direct=env["HEIMDALL_TEST_KAFKA"],
        proxied=env["HEIMDALL_KAFKA__BOOTSTRAP_SERVERS"],
        toxiproxy=Toxiproxy(env["HEIMDALL_TEST_TOXIPROXY"]),
    )
    try:
        yield found
    finally:
        if not already:
            with _uncaptured(request.config):
                stack.down(paths, ["kafka"])


@pytest.fixture
def healthy_cluster(cluster: Cluster) -> Iterator[Cluster]:
    """The cluster with every node up, no toxic, replicas in sync; restored after the test too."""
    cluster.heal()
    _restart_missing(cluster)
    cluster.wait_in_sync()
    yield cluster
    with contextlib.suppress(Exception):
        cluster.heal()
    _restart_missing(cluster)


def _restart_missing(cluster: Cluster) -> None:
    for node in cluster.node_ids():
        if cluster.stack.read_pid(cluster.paths, f"kafka-{node}") is None:
            cluster.start(node)


def require_toxiproxy(stack: Any) -> None:
    """Skip as unavailable unless toxiproxy is built already or Go is there to build it."""
    from stacklib.toxiproxy import OLD_GO_VERSION, VERSION, go_binary

    cache = stack.Paths.from_env().cache / "toxiproxy"
    built = any((cache / version / "toxiproxy-server").exists() for version in (VERSION, OLD_GO_VERSION))
    if go_binary() is None and not built:
        unavailable("the three-broker stack needs Go to build toxiproxy", "apt-get install golang-go")


@pytest.fixture
def cluster_settings(
    healthy_cluster: Cluster, services: Any, model_uri: str, tmp_path: Path
) -> Callable[..., Settings]:
    """Settings of a consumer on the cluster through the proxy, on fresh topics and a fresh group.

    The topics are made by ``ensure_topics`` (what ``heimdall-stream topics`` runs) with
    replication 3 and ``min.insync.replicas=2`` from the settings, on the direct listeners.
    """
    suffix = uuid.uuid4().hex[:10]
    names = {
        "input_topic": f"cl.captures.{suffix}",
        "output_topic": f"cl.localizations.{suffix}",
        "dlq_topic": f"cl.dlq.{suffix}",
        "control_topic": f"cl.control.{suffix}",
        "status_topic": f"cl.status.{suffix}",
        "group_id": f"cl-group-{suffix}",
    }
    created: list[bool] = []

    def make(*, direct: bool = False, **overrides: Any) -> Settings:
        kafka = {
            "bootstrap_servers": healthy_cluster.direct if direct else healthy_cluster.proxied,
            "replication_factor": 3,
            "min_insync_replicas": 2,
            "session_timeout_ms": 6000,
            **names,
            **overrides.pop("kafka", {}),
        }
        settings = Settings(
            instance_id=overrides.pop("instance_id", f"cl-{uuid.uuid4().hex[:6]}"),
            kafka=kafka,
            redis={"url": services.redis, "key_prefix": f"cl:{suffix}:", "retry_interval_s": 0.5},
            mlflow={"tracking_uri": services.mlflow, "cache_dir": str(tmp_path / "models")},
            model={"uri": model_uri, "control_hmac_key": CONTROL_KEY},
            metrics={"host": "127.0.0.1", "port": 0},
            batching={"max_batch_size": 16, "max_wait_ms": 20},
            **overrides,
        )
        if not created:
            on_direct = settings.kafka.model_copy(update={"bootstrap_servers": healthy_cluster.direct})
            ensure_topics(settings.model_copy(update={"kafka": on_direct}), partitions=3)
            admin = healthy_cluster.admin()
            wait_for(
                lambda: all(t in admin.list_topics(timeout=10).topics for t in list(names.values())[:5]),
                60,
                "the cluster does not serve the new topics",
            )
            created.append(True)
        return settings

    return make
