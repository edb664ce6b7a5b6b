"""The consumer's consistency check: quality score and covariance widening."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from heimdall_stream.models.features import FEATURE_NAMES
from heimdall_stream.models.quality import (
    IN_DISTRIBUTION_QUALITY,
    MAX_WIDENING,
    Z_LIMIT,
    capture_quality,
    widen,
)
from tests.helpers import features_contract, iq_contract

SLOTS = 7
COL = {name: i for i, name in enumerate(FEATURE_NAMES)}
CONTRACT = features_contract()  # mean 0, std 1: the inputs are the raw features


def _inputs(features: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
    return {"receiver_features": features.astype(np.float32), "receiver_mask": mask.astype(np.float32)}


def _capture(valid: int, correlated: int, present: int = SLOTS) -> tuple[np.ndarray, np.ndarray]:
    features = np.zeros((1, SLOTS, len(FEATURE_NAMES)))
    features[0, :correlated, COL["tdoa_quality"]] = 0.5
    features[0, :valid, COL["tdoa_valid"]] = 1.0
    mask = np.zeros((1, SLOTS))
    mask[0, :present] = 1.0
    return features, mask


def test_a_capture_like_training_with_sharp_peaks_is_fully_trusted():
    checked = capture_quality(CONTRACT, _inputs(*_capture(valid=5, correlated=5)))
    assert checked.quality.tolist() == [1.0] and checked.widening.tolist() == [1.0]


def test_correlated_receivers_without_a_sharp_peak_make_a_doubtful_fix_but_no_widening():
    # A carrier: heard loud with clocks, nothing to correlate.
    checked = capture_quality(CONTRACT, _inputs(*_capture(valid=0, correlated=5)))
    assert checked.quality[0] == 0.0 < IN_DISTRIBUTION_QUALITY and checked.widening[0] == 1.0
    # A single correlated receiver says nothing either way.
    assert capture_quality(CONTRACT, _inputs(*_capture(valid=0, correlated=1))).quality[0] == 1.0


@given(z=st.floats(0.0, 1e4))
def test_a_feature_far_outside_training_widens_in_proportion_up_to_a_bound(z):
    features, mask = _capture(valid=4, correlated=4)
    features[0, 2, COL["power_dbfs"]] = -z
    checked = capture_quality(CONTRACT, _inputs(features, mask))
    expected = max(1.0, z / Z_LIMIT)
    assert checked.widening[0] == pytest.approx(min(expected, MAX_WIDENING))
    assert checked.quality[0] == pytest.approx(1.0 / expected)


def test_absent_slots_are_ignored():
    features, mask = _capture(valid=3, correlated=3, present=3)
    features[0, 5, COL["power_dbfs"]] = 1e6  # garbage in an absent slot
    assert capture_quality(CONTRACT, _inputs(features, mask)).widening[0] == 1.0


def test_iq_models_and_models_without_tdoa_quality_are_not_scored_by_it():
    iq = {"iq": np.zeros((3, SLOTS, 2, 10), np.float32), "receiver_mask": np.ones((3, SLOTS), np.float32)}
    checked = capture_quality(iq_contract(), iq)
    assert checked.quality.tolist() == [1.0] * 3 and checked.widening.tolist() == [1.0] * 3
    old = features_contract(feature_names=FEATURE_NAMES[:-1], feature_mean=(0.0,) * 9, feature_std=(1.0,) * 9)
    features, mask = _capture(valid=0, correlated=5)
    assert capture_quality(old, _inputs(features[..., :-1], mask)).quality[0] == 1.0


def test_widen_scales_sigmas_only():
    out = widen(np.array([[100.0, 50.0, 0.3]]), np.array([2.0]))
    assert out.tolist() == [[200.0, 100.0, 0.3]]
