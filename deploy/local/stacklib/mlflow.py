"""The MLflow tracking server and model registry: sqlite backend, proxied local artifact root."""

from __future__ import annotations

import shutil
import sys
import urllib.request
from pathlib import Path

from stacklib.paths import Paths
from stacklib.procs import spawn


def start_mlflow(paths: Paths, ports: dict[str, int]) -> int:
    """Start ``mlflow server`` from this Python's environment (the dev extra installs it)."""
    mlflow = Path(sys.executable).with_name("mlflow")
    binary = str(mlflow) if mlflow.exists() else shutil.which("mlflow")
    if binary is None:
        raise RuntimeError("mlflow is missing; install the dev extra (make venv)")
    mdir = paths.state / "mlflow"
    (mdir / "artifacts").mkdir(parents=True, exist_ok=True)
    return spawn(
        paths,
        "mlflow",
        [
            binary,
            "server",
            "--backend-store-uri",
            f"sqlite:///{mdir / 'mlflow.db'}",
            "--artifacts-destination",
            str(mdir / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(ports["mlflow"]),
            "--workers",
            "1",
        ],
        # The job runner spawns a handful of worker processes this stack never uses.
        env={"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
    )


def mlflow_ready(_paths: Paths, port: int) -> bool:
    """GET /health answered with 200."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False
