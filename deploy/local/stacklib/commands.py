"""The stack's commands: ``up`` (idempotent), ``down``, ``status``, and the env file."""

from __future__ import annotations

import functools
import os
import signal
import time
from collections.abc import Callable

from stacklib import acls, cluster
from stacklib.kafka import kafka_ready, start_kafka
from stacklib.mlflow import mlflow_ready, start_mlflow
from stacklib.paths import SERVICES, Paths, Waiting, log
from stacklib.procs import (
    READY_TIMEOUT_S,
    STOP_TIMEOUT_S,
    load_ports,
    port_open,
    read_pid,
    saved_ports,
    stop,
    wait_until,
)
from stacklib.redis import redis_ready, start_redis
from stacklib.secure import kafka_client_options, load_secrets, make_secure, missing_for_secure

STARTERS: dict[str, Callable[[Paths, dict[str, int]], int]] = {
    "kafka": start_kafka,
    "redis": start_redis,
    "mlflow": start_mlflow,
}
READY: dict[str, Callable[[Paths, int], bool]] = {
    "kafka": kafka_ready,
    "redis": redis_ready,
    "mlflow": mlflow_ready,
}


def write_env(paths: Paths, ports: dict[str, int]) -> None:
    """Write the addresses for tests (HEIMDALL_TEST_*) and the consumer (HEIMDALL_*)."""
    kafka = f"127.0.0.1:{ports['kafka']}"
    redis = f"{'rediss' if paths.secure else 'redis'}://127.0.0.1:{ports['redis']}/0"
    mlflow = f"http://127.0.0.1:{ports['mlflow']}"
    lines = [
        f"HEIMDALL_TEST_KAFKA={kafka}",
        f"HEIMDALL_TEST_REDIS={redis}",
        f"HEIMDALL_TEST_MLFLOW={mlflow}",
        f"HEIMDALL_KAFKA__BOOTSTRAP_SERVERS={kafka}",
        f"HEIMDALL_REDIS__URL={redis}",
        f"HEIMDALL_MLFLOW__TRACKING_URI={mlflow}",
        f"MLFLOW_TRACKING_URI={mlflow}",
    ]
    if cluster.size(paths) > 1:  # the consumer goes through the fault proxy, tooling does not
        overrides = cluster.env_lines(paths, ports)
        lines = [f"{k}={overrides.pop(k)}" if k in overrides else line
                 for line in lines for k in [line.split("=", 1)[0]]]  # fmt: skip
        lines += [f"{k}={v}" for k, v in overrides.items()]
    if paths.secure:
        values = load_secrets(paths)
        kafka_options = kafka_client_options(paths)
        lines += [
            f"HEIMDALL_KAFKA__SECURITY_PROTOCOL={kafka_options['security.protocol']}",
            f"HEIMDALL_KAFKA__SASL_MECHANISM={kafka_options['sasl.mechanism']}",
            f"HEIMDALL_KAFKA__SASL_USERNAME={kafka_options['sasl.username']}",
            f"HEIMDALL_KAFKA__SASL_PASSWORD={kafka_options['sasl.password']}",
            f"HEIMDALL_KAFKA__SSL_CA_LOCATION={kafka_options['ssl.ca.location']}",
            f"HEIMDALL_REDIS__PASSWORD={values['redis_password']}",
            f"HEIMDALL_REDIS__SSL_CA_CERTS={paths.tls / 'ca.pem'}",
        ]
    paths.env_file.touch(mode=0o600)
    paths.env_file.write_text("\n".join(lines) + "\n")
    if paths.secure:
        # The same settings as each other principal: stack.operator.env, stack.simulator.env,
        # stack.observer.env, stack.admin.env (the super user, for `heimdall-stream topics`).
        for role in ("operator", "simulator", "observer", "admin"):
            options = kafka_client_options(paths, admin=role == "admin", role=role)
            swapped = {
                "HEIMDALL_KAFKA__SASL_USERNAME": options["sasl.username"],
                "HEIMDALL_KAFKA__SASL_PASSWORD": options["sasl.password"],
            }
            role_lines = [
                f"{key}={swapped[key]}" if key in swapped else line
                for line in lines
                for key in [line.split("=", 1)[0]]
            ]
            role_file = paths.state / f"stack.{role}.env"
            role_file.touch(mode=0o600)
            role_file.write_text("\n".join(role_lines) + "\n")


def authorize(paths: Paths, names: acls.Names | None = None) -> int:
    """Create the principals and their ACLs on a secured stack's Kafka (idempotent).

    ``names``: the topics and group to grant; by default those of the ``HEIMDALL_KAFKA__*``
    variables in the environment, else the service's defaults.  Returns the number of ACLs.
    """
    options = {
        "bootstrap.servers": cluster.bootstrap(paths, saved_ports(paths), proxied=False)
        if cluster.size(paths) > 1
        else f"127.0.0.1:{saved_ports(paths)['kafka']}",
        **kafka_client_options(paths, admin=True),
    }
    acls.upsert_users(options, load_secrets(paths))
    return acls.grant(options, names or acls.Names.from_env(os.environ))


def up(paths: Paths, services: list[str], *, secure: bool = False, brokers: int | None = None) -> None:
    """Start each service unless it already runs and answers; then write the env file.

    ``brokers``: 3 makes (once) this state directory's Kafka a three-node cluster (``cluster``).
    """
    if brokers is not None:
        cluster.set_size(paths, brokers)
    if secure or paths.secure:
        missing = missing_for_secure(services)
        if missing:
            raise RuntimeError(
                "the secured stack cannot start: "
                + "; ".join(f"{what} is missing ({how})" for what, how in missing)
            )
        make_secure(paths)
    ports = load_ports(paths)
    for service in services:
        if service == "kafka" and cluster.size(paths) > 1:
            cluster.up_cluster(paths, ports)
            continue
        port = ports[service]
        pid = read_pid(paths, service)
        if pid is not None and READY[service](paths, port):
            log(f"{service} already up on 127.0.0.1:{port} (pid {pid})")
            continue
        if pid is not None:
            stop(paths, service)
        if port_open(port):
            raise RuntimeError(
                f"port {port} for {service} is taken by a process this stack did not start; "
                f"free it or set HEIMDALL_STACK_{service.upper()}_PORT"
            )
        status = Waiting(service)
        try:
            pid = STARTERS[service](paths, ports)
        except BaseException:
            status.failed()
            raise
        try:
            wait_until(functools.partial(READY[service], paths, port), READY_TIMEOUT_S, service, pid, status)
        except BaseException:
            stop(paths, service)  # never leave a half-started service holding its port
            raise
        status.done(f"on 127.0.0.1:{port} (pid {pid})")
    if paths.secure and "kafka" in services:
        granted = authorize(paths)
        log(f"kafka: users {', '.join(user for user, _ in acls.ROLES.values())} and {granted} ACLs in place")
    write_env(paths, ports)


def down(paths: Paths, services: list[str], sig: int = signal.SIGTERM) -> None:
    """Stop the named services (all by default) and wait until their ports are free."""
    ports = saved_ports(paths)
    for service in reversed(services):
        if service == "kafka" and cluster.size(paths) > 1:
            cluster.down_cluster(paths, sig)
            continue
        stop(paths, service, sig)
        port = ports.get(service)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while port and port_open(port) and time.monotonic() < deadline:
            time.sleep(0.2)


def status(paths: Paths) -> int:
    """Print one line per service; exit 0 only when all of them answer."""
    ports = saved_ports(paths)
    healthy = True
    for service in SERVICES:
        if service == "kafka" and cluster.size(paths) > 1:
            lines, ready = cluster.status_lines(paths)
            print("\n".join(lines))
            healthy &= ready
            continue
        pid = read_pid(paths, service)
        port = ports.get(service)
        ready = port is not None and READY[service](paths, port)
        healthy &= ready
        state = "ready" if ready else ("started, not answering" if pid else "stopped")
        print(f"{service:7s} {state:24s} port={port} pid={pid}")
    return 0 if healthy else 1
