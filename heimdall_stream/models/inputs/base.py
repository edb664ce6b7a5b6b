"""What every model input kind provides, and the prepared batch it hands to onnxruntime.

An input kind is one class: its contract side is class-level (the graph inputs it expects and
its part of the contract JSON, known before any model exists), its model side is an instance
bound to one loaded model (turning validated captures into that model's input arrays).  The
kinds are listed in ``heimdall_stream.models.inputs.INPUT_KINDS``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import blake3
import numpy as np
import numpy.typing as npt

from heimdall_stream.models.features import assemble_batch
from heimdall_stream.wire.messages import IqCapture

if TYPE_CHECKING:  # the contract module imports the input kinds: only its type is needed here
    from heimdall_stream.models.contract import ModelContract

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
# Expected shape of a graph input: an int where the contract fixes the size, None where any
# size goes (the batch axis).
Shape = tuple[int | None, ...]
MASK = "receiver_mask"


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


def mask_shape(contract: ModelContract) -> Shape:
    """Shape of ``receiver_mask``, which every kind takes: (batch, receiver slots)."""
    return (None, len(contract.network.receivers))


class InputKind(ABC):
    """One kind of model input: its contract side (class-level) and its model side (instance)."""

    name: ClassVar[str]

    # ---------------------------------------------------------------- contract side

    @classmethod
    @abstractmethod
    def input_shapes(cls, contract: ModelContract) -> dict[str, Shape]:
        """Graph input name → expected shape, for a model with this contract.

        The order is the order of the arrays in ``PreparedBatch.inputs`` and in the cache key.
        """

    @classmethod
    def parse_spec(cls, body: Mapping[str, Any]) -> dict[str, Any]:
        """``ModelContract`` fields read from this kind's part of the contract JSON.

        Raises ``ModelContractError`` when that part is missing or wrong; a kind with no part of
        its own has none.
        """
        return {}

    @classmethod
    def spec_json(cls, contract: ModelContract) -> dict[str, Any]:
        """The kind's part of the contract JSON: the inverse of ``parse_spec``."""
        return {}

    # ---------------------------------------------------------------- model side

    def __init__(self, contract: ModelContract, model_sha256: str) -> None:
        self.contract = contract
        # Bytes of the model's identity, hashed into every cache key: another model's output
        # for the same input is another result.
        self._model_id = model_sha256.encode()

    @abstractmethod
    def model_inputs(self, iq: F32, mask: F32, sample_rate_hz: F64, clock_offset_s: F64) -> dict[str, F32]:
        """The model's input arrays, in ``input_shapes`` order, from a dense batch of captures."""

    def prepare(self, captures: Sequence[IqCapture]) -> PreparedBatch:
        """Model inputs for validated captures, with each capture's cache key."""
        contract = self.contract
        dense = assemble_batch(captures, contract.slots, contract.sample_count)
        # Contiguous arrays, so that each row is one contiguous buffer for the hash below
        # (a no-op for the arrays the kinds build).
        inputs = {name: np.ascontiguousarray(array) for name, array in self.model_inputs(*dense).items()}
        keys = tuple(self._cache_key(inputs, row) for row in range(len(captures)))
        used = tuple(tuple(r.receiver_id for r in c.receivers) for c in captures)
        return PreparedBatch(inputs=inputs, cache_keys=keys, receivers_used=used)

    def _cache_key(self, inputs: Mapping[str, F32], row: int) -> str:
        """Hash of exactly what the model sees for one capture, and of the model itself.

        The rows are hashed through their buffers (an IQ row is ~560 KB, and ``tobytes()``
        would copy it just to hash it) with BLAKE3: cryptographic, so no crafted input can take
        another's cached answer, and about ten times faster than hashlib's BLAKE2b here (0.25
        against 2.4 ms per IQ row, measured side by side).
        """
        digest = blake3.blake3(self._model_id)
        for array in inputs.values():
            digest.update(np.ascontiguousarray(array[row]).data.cast("B"))
        return digest.hexdigest(20)

    def warm_up_inputs(self, batch_size: int) -> dict[str, F32]:
        """Inputs of a warm-up batch: zeros, with every receiver present.

        A kind whose model would choke on zeros overrides this.
        """
        inputs = {
            name: np.zeros(tuple(batch_size if dim is None else dim for dim in shape), np.float32)
            for name, shape in self.input_shapes(self.contract).items()
        }
        if MASK in inputs:
            inputs[MASK][:] = 1.0
        return inputs
