"""Ports, pid files, and starting, waiting for and stopping the stack's processes."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from stacklib.paths import Paths, Waiting, log

# Generous: it only bounds a hang. A loaded or slow machine can take minutes to start a JVM.
READY_TIMEOUT_S = 300.0
STOP_TIMEOUT_S = 30.0


def run_or_raise(
    what: str, argv: list[str], *, env: dict[str, str] | None = None, timeout: float | None = None
) -> None:
    """Run a short command to completion; on failure raise naming ``what`` with its last output.

    The message carries the command's own words (its last 2,000 characters), not the command
    line, which for the Kafka tools is a classpath of dozens of jar paths.
    """
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(
            f"{what} failed (exit {done.returncode}): " + (done.stderr or done.stdout).strip()[-2000:]
        )


def free_port() -> int:
    """Ask the kernel for a free loopback port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts TCP connections on the port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def load_ports(paths: Paths) -> dict[str, int]:
    """Ports chosen earlier, overridden by HEIMDALL_STACK_<SERVICE>_PORT, else fresh ones."""
    ports: dict[str, int] = {}
    if paths.ports_file.exists():
        ports = {k: int(v) for k, v in json.loads(paths.ports_file.read_text()).items()}
    wanted = {
        "kafka": "HEIMDALL_STACK_KAFKA_PORT",
        "kafka_controller": "HEIMDALL_STACK_KAFKA_CONTROLLER_PORT",
        "redis": "HEIMDALL_STACK_REDIS_PORT",
        "mlflow": "HEIMDALL_STACK_MLFLOW_PORT",
    }
    for name, env in wanted.items():
        if env in os.environ:
            ports[name] = int(os.environ[env])
        elif name not in ports:
            ports[name] = free_port()
    paths.state.mkdir(parents=True, exist_ok=True)
    paths.ports_file.write_text(json.dumps(ports, indent=2))
    return ports


def saved_ports(paths: Paths) -> dict[str, int]:
    """The remembered ports, without choosing any (empty before the first ``up``)."""
    if not paths.ports_file.exists():
        return {}
    return {k: int(v) for k, v in json.loads(paths.ports_file.read_text()).items()}


def read_pid(paths: Paths, service: str) -> int | None:
    """The pid of a service this script started, if that process is still the same one."""
    pidfile = paths.pidfile(service)
    if not pidfile.exists():
        return None
    try:
        pid = int(pidfile.read_text().strip())
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except (ValueError, OSError):
        return None
    # A recycled pid belongs to someone else: only claim a process that runs inside this state
    # directory (every service is started there; redis-server rewrites its command line, so the
    # working directory is the reliable mark).
    return pid if (cwd + "/").startswith(str(paths.state) + "/") and not _is_zombie(pid) else None


def spawn(paths: Paths, service: str, argv: list[str], env: dict[str, str] | None = None) -> int:
    """Start a service in its own session (so its whole process group can be stopped)."""
    logfile = paths.state / f"{service}.out"
    with logfile.open("ab") as out:
        proc = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=paths.state,
            env={**os.environ, **(env or {})},
        )
    paths.pidfile(service).write_text(str(proc.pid))
    return proc.pid


def wait_until(check: Callable[[], bool], timeout: float, what: str, pid: int, status: Waiting) -> None:
    """Poll ``check`` until it holds, updating the status line; fail early if the process died."""
    while status.elapsed < timeout:
        if not Path(f"/proc/{pid}").exists() or _is_zombie(pid):
            status.failed()
            raise RuntimeError(f"{what} exited during start-up; see its log in the state dir")
        if check():
            return
        status.tick()
        time.sleep(0.25)
    status.failed()
    raise RuntimeError(f"{what} did not become ready within {timeout:.0f}s")


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def stop(paths: Paths, service: str, sig: int = signal.SIGTERM) -> None:
    """Stop a service this script started: signal its process group, wait, then SIGKILL."""
    pid = read_pid(paths, service)
    if pid is None:
        paths.pidfile(service).unlink(missing_ok=True)
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while time.monotonic() < deadline and _group_alive(pid):
        time.sleep(0.2)
    if _group_alive(pid):
        log(f"{service} did not stop within {STOP_TIMEOUT_S:.0f}s; sending SIGKILL")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        while _group_alive(pid):
            time.sleep(0.1)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    paths.pidfile(service).unlink(missing_ok=True)
    log(f"{service} stopped (pid {pid}, signal {signal.Signals(sig).name})")


def _group_alive(pgid: int) -> bool:
    """Whether any non-zombie process of the group is left."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False
