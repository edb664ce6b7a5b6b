"""Model input kinds: one module per kind, listed in ``INPUT_KINDS`` by contract ``input_kind``.

A kind knows the graph inputs it expects of a model with a given contract, its own part of the
contract JSON, how to turn captures into the model's input arrays (with each capture's cache
key), and a warm-up batch.  Adding a kind is one module with an ``InputKind`` subclass plus one
line below; nothing else branches on the kind.
"""

from __future__ import annotations

from heimdall_stream.models.inputs.base import InputKind, PreparedBatch, Shape
from heimdall_stream.models.inputs.features import FeaturesInput
from heimdall_stream.models.inputs.iq import IqInput

INPUT_KINDS: dict[str, type[InputKind]] = {
    FeaturesInput.name: FeaturesInput,
    IqInput.name: IqInput,
}

__all__ = ["INPUT_KINDS", "InputKind", "PreparedBatch", "Shape"]
