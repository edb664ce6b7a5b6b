"""Feature extraction: shapes, determinism, physics sanity and vectorisation."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyproj import Geod

from heimdall_stream.lab.simulator import SPEED_OF_LIGHT, IqSimulator, LinkModel, Transmitter
from heimdall_stream.models.features import FEATURE_NAMES, assemble_batch, extract_features
from heimdall_stream.network import load_network

NETWORK = load_network()
COL = {name: i for i, name in enumerate(FEATURE_NAMES)}


def _batch(sims):
    return assemble_batch([s.capture for s in sims], NETWORK.index(), 10_000)


def test_shape_dtype_and_absent_slots_are_zero():
    sim = IqSimulator(NETWORK, LinkModel(offline_probability=0.4), seed=3)
    caps = [sim.generate(i) for i in range(6)]
    iq, mask, fs, offsets = _batch(caps)
    features = extract_features(iq, mask, fs, offsets)
    assert features.shape == (6, len(NETWORK.receivers), len(FEATURE_NAMES))
    assert features.dtype == np.float32
    assert np.isfinite(features).all()
    assert (features[mask == 0] == 0).all()
    assert (mask == 0).any()


def test_deterministic_and_batch_independent():
    sim = IqSimulator(NETWORK, seed=5)
    caps = [sim.generate(i) for i in range(4)]
    together = extract_features(*_batch(caps))
    alone = np.concatenate([extract_features(*_batch([c])) for c in caps])
    np.testing.assert_allclose(together, alone, rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(together, extract_features(*_batch(caps)))


def test_snr_and_noise_floor_track_the_simulated_truth():
    sim = IqSimulator(NETWORK, LinkModel(offline_probability=0.0), seed=11)
    caps = [sim.generate(i) for i in range(16)]
    features = extract_features(*_batch(caps))
    expected_noise_dbfs = sim.noise_floor_dbm - sim.link.full_scale_dbm
    noise = features[..., COL["noise_floor_dbfs"]]
    # Far from the signal the noise estimate is within a dB; strong FM sidebands lift it a little.
    assert np.median(noise) == pytest.approx(expected_noise_dbfs, abs=3.0)
    truth = np.array([[c.snr_db[r] for r in NETWORK.ids] for c in caps])
    measured = features[..., COL["snr_db"]]
    usable = (truth > 5) & (truth < 30)
    assert np.median(np.abs(measured[usable] - truth[usable])) < 2.0
    assert (features[..., COL["presence"]][truth > 10] == 1).all()


def test_a_receiver_that_hears_only_noise_is_not_present():
    sim = IqSimulator(NETWORK, LinkModel(offline_probability=0.0), seed=1)
    # 1 mW far south of Genova: Milano hears nothing.
    cap = sim.generate(0, Transmitter(44.0, 8.9, 0.0, 145.0e6))
    features = extract_features(*_batch([cap]))
    assert cap.snr_db["milano-baggio"] < -10
    assert features[0, NETWORK.index()["milano-baggio"], COL["presence"]] == 0


@given(lat=st.floats(44.4, 45.5), lon=st.floats(7.3, 9.1))
@settings(max_examples=8, deadline=None)
def test_tdoa_matches_the_geometry_for_strong_synchronised_receivers(lat, lon):
    sim = IqSimulator(
        NETWORK, LinkModel(offline_probability=0.0, synced_fraction=1.0, shadowing_db=0.0), seed=2
    )
    cap = sim.generate(0, Transmitter(lat, lon, 47.0, 145.0e6))
    features = extract_features(*_batch([cap]))[0]
    geod = Geod(ellps="WGS84")
    dist = np.array([geod.inv(lon, lat, r.longitude, r.latitude)[2] for r in NETWORK.receivers])
    valid = features[:, COL["tdoa_valid"]] > 0
    assert valid.sum() >= 3
    assert features[valid, COL["tdoa_us"]].sum() == pytest.approx(0.0, abs=1e-2)
    arrival_us = dist / SPEED_OF_LIGHT * 1e6
    expected_us = arrival_us - arrival_us[valid].mean()
    good = valid & (features[:, COL["snr_db"]] > 15)
    errors = np.abs(features[good, COL["tdoa_us"]] - expected_us[good])
    assert np.median(errors) < 5.0  # 1/10 of a sample at 50 kHz


def test_rejects_a_malformed_batch():
    with pytest.raises(ValueError, match=r"\(B, N, 2, L\)"):
        extract_features(np.zeros((2, 7, 3, 10), np.float32), np.ones((2, 7), np.float32), 50e3)
