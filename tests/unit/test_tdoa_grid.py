"""The TDOA grid posterior (ONNX nodes) finds transmitters from arrival-time differences alone."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from heimdall_stream.lab.simulator import IqSimulator, LinkModel, Transmitter
from heimdall_stream.lab.tdoa_grid import GRID_FEATURES, UNIT_M, run_grid
from heimdall_stream.models.features import assemble_batch, extract_features, normalise_features
from tests.helpers import NETWORK, features_contract

CONTRACT = features_contract()
SIMULATOR = IqSimulator(
    NETWORK, LinkModel(offline_probability=0.0, synced_fraction=1.0, shadowing_db=0.0), seed=4
)


def _grid(transmitters):
    sims = [SIMULATOR.generate(i, tx) for i, tx in enumerate(transmitters)]
    iq, mask, fs, offsets = assemble_batch([s.capture for s in sims], NETWORK.index(), 10_000)
    features = extract_features(iq, mask, fs, offsets)
    normalised = normalise_features(features, mask, CONTRACT.feature_mean, CONTRACT.feature_std)
    return run_grid(CONTRACT, normalised, mask)


@given(lat=st.floats(44.5, 45.4), lon=st.floats(7.4, 9.0))
@settings(max_examples=6, deadline=None)
def test_strong_synchronised_receivers_pin_the_transmitter_down(lat, lon):
    out = _grid([Transmitter(lat, lon, 47.0, 145.0e6)])
    assert out.shape == (1, GRID_FEATURES) and np.isfinite(out).all()
    east, north = CONTRACT.frame.to_enu(lat, lon)
    error = np.hypot(out[0, 0] * UNIT_M - float(east), out[0, 1] * UNIT_M - float(north))
    assert error < 3_000, f"grid posterior mean {error:.0f} m from the truth"
    assert out[0, 5] == pytest.approx(1.0)  # all seven receivers took part


def test_without_synchronised_receivers_the_posterior_is_wide():
    sim = IqSimulator(NETWORK, LinkModel(synced_fraction=0.0), seed=5)
    captures = [sim.generate(i).capture for i in range(3)]
    iq, mask, fs, offsets = assemble_batch(captures, NETWORK.index(), 10_000)
    features = extract_features(iq, mask, fs, offsets)
    out = run_grid(
        CONTRACT, normalise_features(features, mask, CONTRACT.feature_mean, CONTRACT.feature_std), mask
    )
    assert (out[:, 5] == 0).all()
    assert (np.exp(out[:, 2]) * UNIT_M > 30_000).all(), "no TDOA must mean a flat, wide posterior"
