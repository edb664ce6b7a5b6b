"""onnxruntime sessions for localization models: contract check, input preparation, warm-up.

``load_model`` opens an ONNX file with full graph optimisation, validates its contract (a model
that does not fit is refused with ``ModelContractError``), and runs one warm-up batch so the
first real batch does not pay for lazy initialisation.  ``LoadedModel.prepare`` turns validated
captures into the model's input arrays through the adapter of its contract's input kind
(``heimdall_stream.models.inputs``); ``LoadedModel.infer`` runs them and checks the outputs'
shapes and values.

Memory: onnxruntime's activations grow with the rows of a run (the IQ benchmark CNN needs about
70 MB per 32 captures in one run, per worker running at once), so ``infer`` runs a batch whose
input exceeds ``max_run_input_bytes`` in slices of whole captures; the outputs are the same.
The default slice is one reference IQ capture: a run of 7 costs a convolutional IQ model 13 %
less a capture alone, which the service did not show, for about 120 MB more peak RSS.
The CPU memory arena is off by default (``session_options``): with it, each session keeps the
high-water mark of its largest run reserved for good, for every run that was ever concurrent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from heimdall_stream.errors import InferenceError, ModelLoadError
from heimdall_stream.models.contract import ModelContract, TensorSpec, validate_contract
from heimdall_stream.models.inputs import PreparedBatch
from heimdall_stream.wire.messages import IqCapture

# PreparedBatch is defined with the input kinds and re-exported here, beside the model it feeds.
__all__ = ["LoadedModel", "Prediction", "PreparedBatch", "load_model", "session_options"]


@dataclass(frozen=True)
class Prediction:
    """Outputs of one batch: east/north metres and (σe, σn, ρ)."""

    position_enu_m: npt.NDArray[np.float64]
    covariance_enu: npt.NDArray[np.float64]


class LoadedModel:
    """A warmed-up onnxruntime session with its contract and registry identity."""

    def __init__(
        self,
        session: ort.InferenceSession,
        contract: ModelContract,
        *,
        name: str,
        version: str,
        uri: str,
        sha256: str,
        max_run_input_bytes: int = 0,
    ) -> None:
        self.session = session
        self.max_run_input_bytes = max_run_input_bytes
        self.contract = contract
        self.name = name
        self.version = version
        self.uri = uri
        self.sha256 = sha256
        self.input_adapter = contract.input_adapter(contract, sha256)

    @property
    def label(self) -> str:
        """``name/version``, as used in logs."""
        return f"{self.name}/{self.version}"

    def prepare(self, captures: Sequence[IqCapture]) -> PreparedBatch:
        """Model inputs for validated captures, each with its cache key (see ``InputKind``)."""
        return self.input_adapter.prepare(captures)

    def infer(self, batch: PreparedBatch) -> Prediction:
        """Run the session (in slices, see ``rows_per_run``); ``InferenceError`` on failure or bad outputs."""
        size = len(batch.cache_keys)
        step = self.rows_per_run(batch.inputs, size)
        starts = range(0, size, step) or range(1)  # an empty batch is still one (empty) run
        parts = [self._run({k: v[i : i + step] for k, v in batch.inputs.items()}) for i in starts]
        position = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
        covariance = np.concatenate([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
        if position.shape != (size, 2) or covariance.shape != (size, 3):
            raise InferenceError(
                f"{self.label}: outputs have shapes {position.shape}, {covariance.shape}; "
                f"expected ({size}, 2), ({size}, 3)"
            )
        return Prediction(position, covariance)

    def rows_per_run(self, inputs: Mapping[str, npt.NDArray[np.float32]], size: int) -> int:
        """Captures per onnxruntime run: all of them, or as many as ``max_run_input_bytes`` holds (≥ 1)."""
        if self.max_run_input_bytes <= 0 or size <= 1:
            return max(size, 1)
        row_bytes = sum(array.nbytes for array in inputs.values()) // size
        return max(1, min(size, self.max_run_input_bytes // max(row_bytes, 1)))

    def _run(
        self, inputs: Mapping[str, npt.NDArray[np.float32]]
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        try:
            position, covariance = self.session.run(["position_enu_m", "covariance_enu"], dict(inputs))
        except Exception as exc:  # onnxruntime raises its own exception types (Fail, InvalidArgument...)
            raise InferenceError(f"{self.label}: onnxruntime failed: {exc}") from exc
        return np.asarray(position, dtype=np.float64), np.asarray(covariance, dtype=np.float64)

    def warm_up(self, batch_size: int = 1) -> None:
        """One inference on the kind's warm-up inputs so lazy initialisation happens before readiness."""
        inputs = self.input_adapter.warm_up_inputs(batch_size)
        self.infer(PreparedBatch(inputs, ("warm-up",) * batch_size, ((),) * batch_size))


def session_options(
    intra_op_threads: int, inter_op_threads: int, *, cpu_mem_arena: bool = False
) -> ort.SessionOptions:
    """Full graph optimisation, sequential execution, thread counts and arena from settings."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = inter_op_threads
    # Off: activations are allocated per run and given back, instead of the arena keeping the
    # largest run's (times the runs ever concurrent) for the life of the session.
    options.enable_cpu_mem_arena = cpu_mem_arena
    options.log_severity_level = 3
    return options


def load_model(
    path: Path,
    *,
    name: str,
    version: str,
    uri: str,
    sha256: str,
    intra_op_threads: int = 1,
    inter_op_threads: int = 1,
    warm_up_batch: int = 8,
    cpu_mem_arena: bool = False,
    max_run_input_bytes: int = 0,
) -> LoadedModel:
    """Open, validate and warm up a model file whose sha256 the caller has verified."""
    try:
        session = ort.InferenceSession(
            str(path),
            sess_options=session_options(intra_op_threads, inter_op_threads, cpu_mem_arena=cpu_mem_arena),
            providers=["CPUExecutionProvider"],
        )
    except Exception as exc:  # a file onnxruntime cannot parse
        raise ModelLoadError(f"{name}/{version}: onnxruntime cannot open {path.name}: {exc}") from exc
    contract = validate_contract(
        session.get_modelmeta().custom_metadata_map,
        [TensorSpec(i.name, i.type, tuple(i.shape)) for i in session.get_inputs()],
        [TensorSpec(o.name, o.type, tuple(o.shape)) for o in session.get_outputs()],
    )
    model = LoadedModel(
        session,
        contract,
        name=name,
        version=version,
        uri=uri,
        sha256=sha256,
        max_run_input_bytes=max_run_input_bytes,
    )
    model.warm_up(warm_up_batch)
    return model
