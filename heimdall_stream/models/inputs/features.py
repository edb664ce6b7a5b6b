"""The ``features`` input kind: per-receiver features, normalised with the contract's statistics.

Its part of the contract JSON is ``features``: the names of the features it eats (a subset of
``FEATURE_NAMES``, in its order) and their mean and std on the training set.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from heimdall_stream.errors import ModelContractError
from heimdall_stream.models.features import FEATURE_NAMES, extract_features, normalise_features
from heimdall_stream.models.inputs.base import F32, F64, MASK, InputKind, Shape, mask_shape

if TYPE_CHECKING:
    from heimdall_stream.models.contract import ModelContract


class FeaturesInput(InputKind):
    """``receiver_features`` (batch, slots, features) and ``receiver_mask`` (batch, slots)."""

    name = "features"

    @classmethod
    def input_shapes(cls, contract: ModelContract) -> dict[str, Shape]:
        """The features tensor (one column per contract feature), then the mask."""
        slots = len(contract.network.receivers)
        return {"receiver_features": (None, slots, len(contract.feature_names)), MASK: mask_shape(contract)}

    @classmethod
    def parse_spec(cls, body: Mapping[str, Any]) -> dict[str, Any]:
        """Feature names, mean and std from the ``features`` object, checked."""
        spec = body.get("features")
        if not isinstance(spec, dict):
            raise ModelContractError("a features model needs a 'features' object with names, mean and std")
        try:
            names = tuple(str(n) for n in spec["names"])
            mean = tuple(float(v) for v in spec["mean"])
            std = tuple(float(v) for v in spec["std"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelContractError(f"features spec is malformed: {exc!r}") from exc
        unknown = [n for n in names if n not in FEATURE_NAMES]
        if unknown:
            raise ModelContractError(f"model wants features this consumer does not compute: {unknown}")
        if not names or len(mean) != len(names) or len(std) != len(names):
            raise ModelContractError(
                f"features: {len(names)} names but {len(mean)} means and {len(std)} stds"
            )
        if not all(math.isfinite(m) for m in mean) or not all(math.isfinite(s) and s > 0 for s in std):
            raise ModelContractError("feature normalisation statistics must be finite, with std > 0")
        return {"feature_names": names, "feature_mean": mean, "feature_std": std}

    @classmethod
    def spec_json(cls, contract: ModelContract) -> dict[str, Any]:
        """The ``features`` object."""
        return {
            "features": {
                "names": list(contract.feature_names),
                "mean": list(contract.feature_mean),
                "std": list(contract.feature_std),
            }
        }

    def __init__(self, contract: ModelContract, model_sha256: str) -> None:
        super().__init__(contract, model_sha256)
        # Converted once per model, not once per batch.
        self._columns = [FEATURE_NAMES.index(name) for name in contract.feature_names]
        self._mean = np.asarray(contract.feature_mean, np.float32)
        self._std = np.asarray(contract.feature_std, np.float32)

    def model_inputs(self, iq: F32, mask: F32, sample_rate_hz: F64, clock_offset_s: F64) -> dict[str, F32]:
        """The contract's features, in its order, normalised; zero in absent slots."""
        features = extract_features(iq, mask, sample_rate_hz, clock_offset_s)[..., self._columns]
        return {"receiver_features": normalise_features(features, mask, self._mean, self._std), MASK: mask}
