"""onnxruntime sessions for localization models: contract check, input preparation, warm-up.

``load_model`` opens an ONNX file with full graph optimisation, validates its contract (a model
that does not fit is refused with ``ModelContractError``), and runs one warm-up batch so the
first real batch does not pay for lazy initialisation.  ``LoadedModel.prepare`` turns validated
captures into the model's input arrays (features or raw IQ); ``LoadedModel.infer`` runs them and
checks the outputs' shapes and values.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from heimdall_stream.errors import InferenceError, ModelLoadError
from heimdall_stream.models.contract import ModelContract, TensorSpec, validate_contract
from heimdall_stream.models.features import assemble_batch, extract_features, normalise_features
from heimdall_stream.wire.messages import IqCapture

F32 = npt.NDArray[np.float32]


@dataclass(frozen=True)
class PreparedBatch:
    """Model inputs of a batch, plus a per-capture key of exactly what the model will see."""

    inputs: dict[str, F32]
    cache_keys: tuple[str, ...]
    receivers_used: tuple[tuple[str, ...], ...]

    def subset(self, rows: Sequence[int]) -> PreparedBatch:
        """The same batch restricted to some rows (cache misses, or a bisection half)."""
        index = np.asarray(rows, dtype=np.int64)
        return PreparedBatch(
            inputs={name: array[index] for name, array in self.inputs.items()},
            cache_keys=tuple(self.cache_keys[i] for i in rows),
            receivers_used=tuple(self.receivers_used[i] for i in rows),
        )


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
        self._mean = np.asarray(contract.feature_mean, np.float32)
        self._std = np.asarray(contract.feature_std, np.float32)
        self._columns = list(contract.feature_columns)

    @property
    def label(self) -> str:
        """``name/version``, as used in logs."""
        return f"{self.name}/{self.version}"

    def prepare(self, captures: Sequence[IqCapture]) -> PreparedBatch:
        """Model inputs for validated captures: features (normalised) or raw IQ, plus the mask."""
        contract = self.contract
        iq, mask, fs, offsets = assemble_batch(captures, contract.slots, contract.sample_count)
        if contract.input_kind == "features":
            features = extract_features(iq, mask, fs, offsets)[..., self._columns]
            main = normalise_features(features, mask, self._mean, self._std)
            inputs = {"receiver_features": main, "receiver_mask": mask}
        else:
            main = iq
            inputs = {"iq": iq, "receiver_mask": mask}
        keys = tuple(self._cache_key(main[b], mask[b]) for b in range(len(captures)))
        used = tuple(tuple(r.receiver_id for r in c.receivers) for c in captures)
        return PreparedBatch(inputs=inputs, cache_keys=keys, receivers_used=used)

    def _cache_key(self, main: F32, mask: F32) -> str:
        """Hash of exactly what the model sees for one capture, and of the model itself."""
        digest = hashlib.blake2b(digest_size=20)
        digest.update(self.sha256.encode())
        digest.update(main.tobytes())
        digest.update(mask.tobytes())
        return digest.hexdigest()

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
        """One inference on zeros so lazy initialisation happens before readiness."""
        contract = self.contract
        slots = len(contract.network.receivers)
        mask = np.ones((batch_size, slots), np.float32)
        if contract.input_kind == "features":
            main = np.zeros((batch_size, slots, len(contract.feature_names)), np.float32)
            inputs = {"receiver_features": main, "receiver_mask": mask}
        else:
            main = np.zeros((batch_size, slots, 2, contract.sample_count), np.float32)
            inputs = {"iq": main, "receiver_mask": mask}
        self.infer(PreparedBatch(inputs, tuple("warm-up" for _ in range(batch_size)), ((),) * batch_size))


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


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
