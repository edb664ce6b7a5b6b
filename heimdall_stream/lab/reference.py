"""Train the reference models and register them in MLflow.

* ``localization_model`` (alias ``champion``): the calibrated features model;
* ``localization_iq_benchmark`` (alias ``benchmark``): the untrained IQ CNN, for benchmarks only.

Each registered version carries the sha256 of its ONNX file as the ``heimdall.sha256`` tag, which
the consumer checks before it opens a downloaded model.  The evaluation report is logged to the
training run as metrics and as ``evaluation.json``; it includes the shift suite (error and
coverage of the exported model on each variant of ``lab.shift``, fresh captures).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from heimdall_stream.lab.iq_benchmark import build_iq_benchmark_model
from heimdall_stream.lab.shift_eval import evaluate_shift, simulate_variants
from heimdall_stream.lab.training import EvaluationReport, StepHook, train_features_model
from heimdall_stream.models.registry import SHA_TAG, file_sha256
from heimdall_stream.network import Network

log = logging.getLogger(__name__)
FEATURES_MODEL = "localization_model"
IQ_MODEL = "localization_iq_benchmark"
EXPERIMENT = "heimdall-reference"


@dataclass(frozen=True)
class Registered:
    """A registered model version."""

    name: str
    version: str
    alias: str
    sha256: str


def register_onnx(
    tracking_uri: str,
    onnx_bytes: bytes,
    name: str,
    alias: str,
    *,
    run_name: str,
    metrics: dict[str, float] | None = None,
    report: dict[str, object] | None = None,
) -> Registered:
    """Log an ONNX model to a new run, register it, tag its sha256 and point ``alias`` at it."""
    import mlflow
    import mlflow.onnx
    import onnx
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment(EXPERIMENT)
    client = MlflowClient(tracking_uri)
    with tempfile.TemporaryDirectory() as tmp, mlflow.start_run(run_name=run_name) as run:
        local = Path(tmp) / "model"
        # One self-contained file: the sha256 then covers every weight the consumer loads.
        mlflow.onnx.save_model(onnx.load_from_string(onnx_bytes), str(local), save_as_external_data=False)
        sha = file_sha256(local / "model.onnx")
        mlflow.log_artifacts(str(local), artifact_path="model")
        if metrics:
            mlflow.log_metrics(metrics)
        if report is not None:
            mlflow.log_dict(report, "evaluation.json")
        version = mlflow.register_model(f"runs:/{run.info.run_id}/model", name).version
    client.set_model_version_tag(name, str(version), SHA_TAG, sha)
    client.set_registered_model_alias(name, alias, str(version))
    log.info("registered %s/%s as @%s (sha256 %s)", name, version, alias, sha[:12])
    return Registered(name, str(version), alias, sha)


def champion_exists(tracking_uri: str, name: str = FEATURES_MODEL, alias: str = "champion") -> bool:
    """Whether ``name@alias`` exists and was registered by this tool (has a sha256 tag)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        version = MlflowClient(tracking_uri).get_model_version_by_alias(name, alias)
    except MlflowException:
        return False
    return SHA_TAG in (version.tags or {})


def train_and_register(
    tracking_uri: str,
    network: Network,
    *,
    n_train: int,
    seed: int = 7,
    progress: Callable[[int], None] | None = None,
    step: StepHook | None = None,
    include_iq: bool = True,
    features_name: str = FEATURES_MODEL,
    iq_name: str = IQ_MODEL,
    shift_per_variant: int | None = None,
) -> tuple[Registered, EvaluationReport]:
    """Train, evaluate and register the features model (and the IQ benchmark model).

    ``progress`` and ``step`` are the progress hooks of ``train_features_model``; ``step`` is
    also called before the shift suite and each registration.  The shift suite simulates
    ``shift_per_variant`` captures of each variant (default: ``n_train // 40``, at least 20).
    """
    onnx_bytes, report = train_features_model(
        network,
        n_train=n_train,
        n_calibration=max(n_train // 4, 200),
        n_test=max(n_train // 4, 200),
        seed=seed,
        progress=progress,
        step=step,
    )
    per_variant = max(n_train // 40, 20) if shift_per_variant is None else shift_per_variant
    if per_variant > 0:
        if step is not None:
            step(f"evaluating on the shift suite ({per_variant} captures a variant)", None)
        results = evaluate_shift(onnx_bytes, simulate_variants(network, per_variant))
        report = dataclasses.replace(report, shift=tuple(r.as_dict() for r in results))
    numbers = {k: float(v) for k, v in report.as_dict().items() if isinstance(v, int | float)}
    numbers |= shift_metrics(report)
    if step is not None:
        step(f"registering {features_name} in MLflow", None)
    features = register_onnx(
        tracking_uri,
        onnx_bytes,
        features_name,
        "champion",
        run_name="features-reference",
        metrics=numbers,
        report=report.as_dict(),
    )
    if include_iq:
        if step is not None:
            step(f"building and registering {iq_name}", None)
        register_onnx(
            tracking_uri,
            build_iq_benchmark_model(network),
            iq_name,
            "benchmark",
            run_name="iq-benchmark",
            report={"benchmark_only": True},
        )
    log.debug("evaluation: %s", json.dumps(report.as_dict()))  # returned, and logged to MLflow
    return features, report


def shift_metrics(report: EvaluationReport) -> dict[str, float]:
    """MLflow metrics of the shift suite: ``shift.<variant>.<measure>``."""
    measures = ("median_error_m", "coverage_68", "coverage_95", "doubtful_share")
    return {f"shift.{row['variant']}.{m}": float(row[m]) for row in report.shift for m in measures}
