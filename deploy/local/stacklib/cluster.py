"""Kafka as a KRaft cluster of three combined broker+controller nodes, behind toxiproxy.

``stack up --brokers 3`` records the size in ``cluster.json`` of the state directory (with the
cluster id every node is formatted with), and from then on ``kafka`` in that directory means the
whole cluster: nodes ``kafka-1`` .. ``kafka-3`` and the ``toxiproxy`` service.  Replication
factor 3 and ``min.insync.replicas=2`` for every topic, the offsets and the transaction state
log, so one node may be down at any time without stopping producers with ``acks=all``.

Each node has three listeners: ``PLAINTEXT`` (``SASL_SSL`` on a secured stack), advertised at its
own port, for inter-broker traffic, admin and test tooling; ``PROXIED``, the same protocol,
advertised at the node's toxiproxy port, so a client that bootstraps there is told the proxied
addresses of every node and reaches the cluster only through the proxy; and ``CONTROLLER``.
``stack.env`` gives the consumer (``HEIMDALL_KAFKA__BOOTSTRAP_SERVERS``) the proxied addresses,
the tests (``HEIMDALL_TEST_KAFKA``) the direct ones, and the proxy's API in
``HEIMDALL_TEST_TOXIPROXY``.

Memory: each JVM gets ``HEIMDALL_STACK_KAFKA_NODE_HEAP`` (default 512m) of heap, the client
compiler only and the serial collector (GC log in ``kafka-N/gc.log``); the log cleaner's dedupe
buffer, 128 MB by default, is cut to 16 MB.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable

from stacklib import install
from stacklib.cluster_config import (
    assign_ports,
    bootstrap,
    env_lines,
    info,
    node_config,
    node_ids,
    node_ports,
    proxies,
    saved,
    scram_users,
    set_size,
    size,
)
from stacklib.kafka import kafka_classpath
from stacklib.paths import Paths, Waiting, log
from stacklib.procs import (
    READY_TIMEOUT_S,
    STOP_TIMEOUT_S,
    port_open,
    read_pid,
    run_or_raise,
    spawn,
    stop,
    wait_until,
)
from stacklib.secure import kafka_client_options
from stacklib.toxiproxy import ensure_server, start_toxiproxy, toxiproxy_ready

# What commands.py and the tests use through this module.
__all__ = ["bootstrap", "env_lines", "node_ids", "set_size", "size"]


def runtime(paths: Paths) -> tuple[str, str]:
    """The Java to run and the classpath of the locked jars (fetched when missing)."""
    java = install.pick_java()
    log(f"kafka: {java.describe()}")
    return java.path, kafka_classpath(paths)


def start_node(paths: Paths, ports: dict[str, int], node: int, java: tuple[str, str] | None = None) -> int:
    """Format the node's storage once (the cluster's id) and start it; its pid.

    ``java``: what ``runtime`` returns, when the caller starts several nodes.
    """
    java_path, classpath = java or runtime(paths)
    ndir = node_config(paths, ports, node)
    props = ndir / "server.properties"
    if not (ndir / "data" / "meta.properties").exists():
        storage = [java_path, "-cp", classpath, "kafka.tools.StorageTool", "format"]
        run_or_raise(
            f"formatting node {node}'s storage in {ndir}",
            [*storage, "-t", info(paths)["cluster_id"], "-c", str(props), *scram_users(paths)],
        )
    heap = os.environ.get("HEIMDALL_STACK_KAFKA_NODE_HEAP", "512m")
    jvm = [
        f"-Xmx{heap}",
        f"-Xms{heap}",
        # Three JVMs on two shared cores: the client compiler alone starts faster and keeps the
        # code cache and compiler threads small; the serial collector needs no GC threads.
        "-XX:TieredStopAtLevel=1",
        "-XX:+UseSerialGC",
        "-XX:ReservedCodeCacheSize=64m",
        "-XX:MaxMetaspaceSize=160m",
        # A node out of memory exits (and the tests see it) instead of hanging in GC.
        "-XX:+ExitOnOutOfMemoryError",
        f"-Xlog:gc:file={ndir / 'gc.log'}:time,uptime:filecount=2,filesize=5m",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={ndir / 'log4j2.yaml'}",
    ]
    return spawn(paths, f"kafka-{node}", [java_path, *jvm, "-cp", classpath, "kafka.Kafka", str(props)])


def brokers_seen(paths: Paths, bootstrap_servers: str, timeout_s: float = 2.0) -> dict[int, str] | None:
    """Node id -> advertised host:port of every broker the metadata lists (None: no answer)."""
    from confluent_kafka.admin import AdminClient

    options: dict[str, str | int | float | bool] = {
        "bootstrap.servers": bootstrap_servers,
        "log_level": 0,
        **kafka_client_options(paths, admin=True),
    }
    try:
        metadata = AdminClient(options).list_topics(timeout=timeout_s)
    except Exception:
        return None
    return {b.id: f"{b.host}:{b.port}" for b in metadata.brokers.values()}


def cluster_ready(paths: Paths, ports: dict[str, int]) -> bool:
    """Every node registered, seen directly and through the proxy at its proxy address."""
    wanted = {n: f"127.0.0.1:{node_ports(ports, n)['proxy']}" for n in node_ids(paths)}
    if not toxiproxy_ready(ports["toxiproxy"], len(wanted)):
        return False
    direct = brokers_seen(paths, bootstrap(paths, ports, proxied=False))
    if direct is None or set(direct) != set(wanted):
        return False
    return brokers_seen(paths, bootstrap(paths, ports, proxied=True)) == wanted


def up_cluster(paths: Paths, ports: dict[str, int]) -> None:
    """Start the proxy and every node that is not running; wait until the cluster answers."""
    ports = assign_ports(paths, ports)
    if read_pid(paths, "toxiproxy") is None:
        _ensure_free(ports["toxiproxy"], "toxiproxy")
        ensure_server(paths)  # a first build takes a while: before the status line starts
        status = Waiting("toxiproxy")
        pid = start_toxiproxy(paths, ports["toxiproxy"], proxies(paths, ports))
        _wait(
            paths,
            "toxiproxy",
            lambda: toxiproxy_ready(ports["toxiproxy"], size(paths)),
            pid,
            status,
            undo=lambda: stop(paths, "toxiproxy"),
        )
        status.done(f"on 127.0.0.1:{ports['toxiproxy']} (pid {pid})")
    status = Waiting(f"kafka cluster of {size(paths)}")
    last = 0
    stopped = [node for node in node_ids(paths) if read_pid(paths, f"kafka-{node}") is None]
    java = runtime(paths) if stopped else None
    for node in stopped:
        for port in (node_ports(ports, node)["direct"], node_ports(ports, node)["controller"]):
            _ensure_free(port, f"kafka-{node}")
        last = start_node(paths, ports, node, java)
    if last or not cluster_ready(paths, ports):
        # Never leave a half-started cluster holding its ports.
        pid = last or _any_node_pid(paths)
        _wait(
            paths,
            "kafka cluster",
            lambda: cluster_ready(paths, ports),
            pid,
            status,
            undo=lambda: down_cluster(paths),
        )
    status.done(
        f"at {bootstrap(paths, ports, proxied=False)}, proxied at {bootstrap(paths, ports, proxied=True)}"
    )


def start_one(paths: Paths, node: int) -> None:
    """Start one stopped node again and wait until the cluster lists it (fault tests)."""
    ports = assign_ports(paths, saved(paths))
    status = Waiting(f"kafka-{node}")
    pid = start_node(paths, ports, node)
    # Asked of the other nodes: they list it only once the controller has it registered.
    others = ",".join(f"127.0.0.1:{node_ports(ports, n)['direct']}" for n in node_ids(paths) if n != node)
    listed = lambda: node in (brokers_seen(paths, others) or {})  # noqa: E731
    _wait(paths, f"kafka-{node}", listed, pid, status, undo=lambda: stop_one(paths, node))
    status.done(f"on 127.0.0.1:{node_ports(ports, node)['direct']} (pid {pid})")


def stop_one(paths: Paths, node: int, sig: int = signal.SIGTERM) -> None:
    """Stop (or SIGKILL) one node and wait until its ports are closed."""
    stop(paths, f"kafka-{node}", sig)
    own = node_ports(saved(paths), node)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while any(port_open(p) for p in (own["direct"], own["controller"])) and time.monotonic() < deadline:
        time.sleep(0.1)


def down_cluster(paths: Paths, sig: int = signal.SIGTERM) -> None:
    """Stop every node, then the proxy.

    All nodes are signalled at once: one by one, the last controller would wait in vain for a
    quorum to shut down in order, until it is killed.
    """
    for node in node_ids(paths):
        pid = read_pid(paths, f"kafka-{node}")
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, sig)
    for node in reversed(node_ids(paths)):
        stop_one(paths, node, sig)
    stop(paths, "toxiproxy", sig)


def status_lines(paths: Paths) -> tuple[list[str], bool]:
    """One line per node and for the proxy; whether the whole cluster answers."""
    ports = saved(paths)
    lines = []
    for node in node_ids(paths):
        port = ports.get(f"kafka-{node}")
        pid = read_pid(paths, f"kafka-{node}")
        lines.append(f"kafka-{node} {'running' if pid else 'stopped':24s} port={port} pid={pid}")
    proxy = read_pid(paths, "toxiproxy")
    lines.append(
        f"toxiproxy {'running' if proxy else 'stopped':22s} port={ports.get('toxiproxy')} pid={proxy}"
    )
    ready = bool(ports) and "toxiproxy" in ports and cluster_ready(paths, ports)
    return lines, ready


def _ensure_free(port: int, service: str) -> None:
    if port_open(port):
        raise RuntimeError(f"port {port} for {service} is taken by a process this stack did not start")


def _any_node_pid(paths: Paths) -> int:
    pids = [pid for n in node_ids(paths) if (pid := read_pid(paths, f"kafka-{n}")) is not None]
    if not pids:
        raise RuntimeError("no Kafka node of the cluster is running")
    return pids[0]


def _wait(
    paths: Paths, what: str, check: Callable[[], bool], pid: int, status: Waiting, *, undo: Callable[[], None]
) -> None:
    """Wait until ``check`` holds; else ``undo`` what was started and raise."""
    try:
        wait_until(check, READY_TIMEOUT_S, what, pid, status)
    except BaseException:
        log(f"{what} did not become ready; stopping it (logs in {paths.state})")
        undo()
        raise
