"""The ``iq`` input kind: the raw IQ samples of every receiver slot, as they arrived.

It has no part of its own in the contract JSON: the slots and the ``iq`` geometry (sample
count) that every contract carries fix its shape.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from heimdall_stream.models.inputs.base import F32, F64, MASK, InputKind, Shape, mask_shape

if TYPE_CHECKING:
    from heimdall_stream.models.contract import ModelContract


class IqInput(InputKind):
    """``iq`` (batch, slots, 2, samples) (I and Q rows) and ``receiver_mask`` (batch, slots)."""

    name = "iq"

    @classmethod
    def input_shapes(cls, contract: ModelContract) -> dict[str, Shape]:
        """The IQ tensor, then the mask."""
        slots = len(contract.network.receivers)
        return {"iq": (None, slots, 2, contract.sample_count), MASK: mask_shape(contract)}

    def model_inputs(self, iq: F32, mask: F32, sample_rate_hz: F64, clock_offset_s: F64) -> dict[str, F32]:
        """The dense IQ batch itself (no copy)."""
        return {"iq": iq, MASK: mask}
