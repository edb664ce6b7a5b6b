"""deploy/local/stack: idempotent up, clean down, no stray process or bound port."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, load_stack_module

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _stack(state: Path, *args: str, **extra_env: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "HEIMDALL_STACK_DIR": str(state),
        "HEIMDALL_STACK_CACHE": os.environ.get("HEIMDALL_STACK_CACHE", str(REPO / ".local-stack" / "cache")),
        "HEIMDALL_STACK_KAFKA_HEAP": "256m",
        **extra_env,
    }
    return subprocess.run(
        [sys.executable, str(REPO / "deploy/local/stack.py"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _processes_in(state: Path) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cwd = os.readlink(proc / "cwd")
            except OSError:
                continue
            if cwd.startswith(str(state)):
                pids.append(int(proc.name))
    return pids


def test_up_up_down_up_down_leaves_nothing_behind(tmp_path):
    state = tmp_path / "stack"
    stack = load_stack_module()

    first = _stack(state, "up")
    assert first.returncode == 0, first.stderr
    # It says which Java and redis-server it runs and where they come from, and when each is ready.
    assert "kafka: java " in first.stderr and "redis: redis-server " in first.stderr
    assert all(f"{s}: ready in " in first.stderr for s in ("kafka", "redis", "mlflow"))
    ports = json.loads((state / "ports.json").read_text())
    assert _stack(state, "status").returncode == 0

    second = _stack(state, "up")
    assert second.returncode == 0, second.stderr
    assert second.stderr.count("already up") == 3

    assert _stack(state, "down").returncode == 0
    assert _processes_in(state) == []
    assert not any(stack.port_open(ports[s]) for s in ("kafka", "redis", "mlflow"))

    third = _stack(state, "up")
    assert third.returncode == 0, third.stderr
    # Same ports after a restart, so Kafka's data is found at the same address.
    assert json.loads((state / "ports.json").read_text()) == ports
    env = (state / "stack.env").read_text()
    assert f"HEIMDALL_TEST_KAFKA=127.0.0.1:{ports['kafka']}" in env

    assert _stack(state, "down").returncode == 0
    assert _processes_in(state) == []
    assert not any(stack.port_open(ports[s]) for s in ("kafka", "redis", "mlflow", "kafka_controller"))
    assert _stack(state, "status").returncode == 1


def test_a_secured_stack_without_its_debian_packages_stops_at_once_naming_them(tmp_path):
    state = tmp_path / "secure"
    empty = tmp_path / "bin"
    empty.mkdir()
    result = _stack(state, "up", "--secure", PATH=str(empty))  # no openssl, no redis-server
    assert result.returncode == 1
    assert "apt-get install openssl" in result.stderr
    assert "apt-get install redis-server" in result.stderr
    assert _processes_in(state) == []
