"""The compose file's MLflow server command, run with the MLflow release it pins (the dev extra's).

MLflow 3.5+ answers 403 to a Host header that is neither localhost nor a private IP; inside the
compose network every client calls it as ``mlflow:5000``. This starts a real ``mlflow server``
with the compose file's ``--allowed-hosts`` and asks it what a consumer would.
"""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.integration.conftest import wait_for

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


API_PATH = "/api/2.0/mlflow/experiments/get-by-name?experiment_name=Default"


def _status(port: int, host_header: str, path: str = API_PATH) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path, headers={"Host": host_header})
        return connection.getresponse().status
    finally:
        connection.close()


def _answers(port: int) -> bool:
    try:
        return _status(port, f"127.0.0.1:{port}", "/health") == 200
    except OSError:
        return False


@pytest.fixture
def compose_mlflow(tmp_path: Path) -> Iterator[int]:
    """``mlflow server`` with the compose file's options, its paths and port moved to this test's."""
    command = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]["mlflow"]["command"]
    words = command.split()
    allowed = words[words.index("--allowed-hosts") + 1]
    port = _free_port()
    mlflow = Path(sys.executable).with_name("mlflow")
    args = [
        str(mlflow),
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--backend-store-uri",
        f"sqlite:///{tmp_path / 'mlflow.db'}",
        "--artifacts-destination",
        str(tmp_path / "artifacts"),
        "--workers",
        "1",
        "--allowed-hosts",
        allowed,
    ]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with (tmp_path / "mlflow.log").open("wb") as log:
        server = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    try:
        wait_for(lambda: server.poll() is not None or _answers(port), 180, "mlflow server answering")
        assert server.poll() is None, (tmp_path / "mlflow.log").read_text()
        yield port
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(30)


def test_the_compose_mlflow_server_answers_the_host_name_the_services_use(compose_mlflow: int):
    uri = yaml.safe_load((REPO / "docker-compose.yml").read_text())["x-heimdall-env"][
        "HEIMDALL_MLFLOW__TRACKING_URI"
    ]
    host = uri.removeprefix("http://").rstrip("/")
    assert _status(compose_mlflow, host) == 200
    # The guard is on: a name the file does not list is still refused.
    assert _status(compose_mlflow, "attacker.example:5000") == 403
