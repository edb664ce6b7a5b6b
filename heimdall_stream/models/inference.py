"""onnxruntime sessions for localization models: contract check, input preparation, warm-up.

``load_model`` opens an ONNX file with full graph optimisation, validates its contract (a model
that does not fit is refused with ``ModelContractError``), and runs one warm-up batch so the
first real batch does not pay for lazy initialisation.  ``LoadedModel.prepare`` turns validated
captures into the model's input arrays through the adapter of its contract's input kind
(``heimdall_stream.models.inputs``); ``LoadedModel.infer`` runs them and checks the outputs'
shapes and values.
"""

from __future__ import annotations

from collections.abc import Sequence
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
    ) -> None:
        self.session = session
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
        """Run the session; raise ``InferenceError`` on failure or malformed outputs."""
        size = len(batch.cache_keys)
        try:
            position, covariance = self.session.run(["position_enu_m", "covariance_enu"], batch.inputs)
        except Exception as exc:  # onnxruntime raises its own exception types (Fail, InvalidArgument...)
            raise InferenceError(f"{self.label}: onnxruntime failed: {exc}") from exc
        position = np.asarray(position, dtype=np.float64)
        covariance = np.asarray(covariance, dtype=np.float64)
        if position.shape != (size, 2) or covariance.shape != (size, 3):
            raise InferenceError(
                f"{self.label}: outputs have shapes {position.shape}, {covariance.shape}; "
                f"expected ({size}, 2), ({size}, 3)"
            )
        return Prediction(position, covariance)

    def warm_up(self, batch_size: int = 1) -> None:
        """One inference on the kind's warm-up inputs so lazy initialisation happens before readiness."""
        inputs = self.input_adapter.warm_up_inputs(batch_size)
        self.infer(PreparedBatch(inputs, ("warm-up",) * batch_size, ((),) * batch_size))


def session_options(intra_op_threads: int, inter_op_threads: int) -> ort.SessionOptions:
    """Full graph optimisation, sequential execution, thread counts from settings."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = inter_op_threads
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
) -> LoadedModel:
    """Open, validate and warm up a model file whose sha256 the caller has verified."""
    try:
        session = ort.InferenceSession(
            str(path),
            sess_options=session_options(intra_op_threads, inter_op_threads),
            providers=["CPUExecutionProvider"],
        )
    except Exception as exc:  # a file onnxruntime cannot parse
        raise ModelLoadError(f"{name}/{version}: onnxruntime cannot open {path.name}: {exc}") from exc
    contract = validate_contract(
        session.get_modelmeta().custom_metadata_map,
        [TensorSpec(i.name, i.type, tuple(i.shape)) for i in session.get_inputs()],
        [TensorSpec(o.name, o.type, tuple(o.shape)) for o in session.get_outputs()],
    )
    model = LoadedModel(session, contract, name=name, version=version, uri=uri, sha256=sha256)
    model.warm_up(warm_up_batch)
    return model
