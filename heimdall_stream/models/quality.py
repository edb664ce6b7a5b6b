"""Per-capture consistency check of a features model's input: a quality score and a widening.

A model's ellipses are calibrated on what it was trained on; a capture unlike that can get a
confident, wrong ellipse.  Two checks need nothing but the model's own inputs and contract:

* distance from the training distribution: the inputs are z-scores against the training set's
  statistics (the contract's ``feature_mean``/``feature_std``); a present receiver with a
  feature beyond ``Z_LIMIT`` standard deviations is something the model never saw.  That part,
  ``Z_LIMIT / max|z|``, also widens the covariance (σ divided by it, at most ``MAX_WIDENING``
  times: further out the model's answer is no estimate at all, and the score says so): the
  model cannot have learned its own uncertainty there;
* consistency of the time differences: of the receivers heard above the TDOA threshold with a
  reported clock (the ones correlated, ``tdoa_quality`` > 0), the share whose correlation peak
  was sharp enough to give a TDOA.  A waveform that carries no time information (a carrier),
  or receivers that disagree, leave the fix on power alone.  The model already sees and is
  calibrated on this, so it lowers the score only.

``quality`` is the smaller of the two, in [0, 1]; a result under ``IN_DISTRIBUTION_QUALITY``
is a doubtful fix (counted, and greyed on the map).  Models without those features, and IQ
models, get quality 1 and no widening.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from heimdall_stream.models.contract import ModelContract

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]

Z_LIMIT = 10.0  # largest |z| of about 1 randomised training-like capture in 1000 (measured)
IN_DISTRIBUTION_QUALITY = 0.5
MAX_WIDENING = 4.0
MIN_CORRELATED = 2  # fewer correlated receivers: the TDOA share says nothing


@dataclass(frozen=True)
class CaptureQuality:
    """Per-capture ``quality`` in [0, 1] and the σ multiplier (≥ 1) of the covariance."""

    quality: F64
    widening: F64


def capture_quality(contract: ModelContract, inputs: Mapping[str, F32]) -> CaptureQuality:
    """The consistency check of a batch of model inputs (see the module docstring)."""
    features = inputs.get("receiver_features")
    mask = inputs.get("receiver_mask")
    if contract.input_kind != "features" or features is None or mask is None or not len(features):
        size = len(next(iter(inputs.values()))) if inputs else 0
        return CaptureQuality(np.ones(size), np.ones(size))
    present = mask > 0
    z = np.abs(np.asarray(features, np.float64)).max(axis=2, initial=0.0)
    max_z = np.where(present, z, 0.0).max(axis=1, initial=0.0)
    distribution = np.minimum(1.0, Z_LIMIT / np.maximum(max_z, 1e-9))
    tdoa = np.ones(len(features))
    names = contract.feature_names
    if "tdoa_valid" in names and "tdoa_quality" in names:
        valid = _raw(contract, features, "tdoa_valid") > 0.5
        correlated = present & (_raw(contract, features, "tdoa_quality") > 1e-3)
        count = correlated.sum(axis=1)
        share = (valid & correlated).sum(axis=1) / np.maximum(count, 1)
        tdoa = np.where(count >= MIN_CORRELATED, share, 1.0)
    return CaptureQuality(np.minimum(distribution, tdoa), np.minimum(1.0 / distribution, MAX_WIDENING))


def widen(covariance: F64, widening: F64) -> F64:
    """(σe, σn, ρ) rows with both sigmas multiplied by ``widening`` (ρ unchanged)."""
    out = np.array(covariance, dtype=np.float64, copy=True)
    out[:, :2] *= np.asarray(widening, np.float64)[:, None]
    return out


def _raw(contract: ModelContract, features: F32, name: str) -> F64:
    """One feature back in its own units (the inputs are normalised, zero in absent slots)."""
    column = contract.feature_names.index(name)
    values = np.asarray(features[..., column], np.float64)
    return values * contract.feature_std[column] + contract.feature_mean[column]
