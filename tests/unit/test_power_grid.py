"""The power grid posterior (ONNX nodes) locates transmitters from SNR alone, and from silence."""

from __future__ import annotations

import dataclasses

import numpy as np

from heimdall_stream.lab.power_grid import (
    POWER_GRID_FEATURES,
    SNR_FLOOR_DB,
    SPACING_M,
    PriorRegion,
    run_power_grid,
)
from heimdall_stream.lab.simulator import IqSimulator, LinkModel, Transmitter
from heimdall_stream.lab.tdoa_grid import UNIT_M
from heimdall_stream.models.features import (
    FEATURE_NAMES,
    assemble_batch,
    extract_features,
    normalise_features,
)
from tests.helpers import NETWORK, features_contract

CONTRACT = features_contract()
REGION = PriorRegion((-84_000.0, 88_000.0), (-80_000.0, 76_000.0))
# No clocks (no TDOA), no shadowing, every receiver online: power alone.
QUIET_LINK = LinkModel(offline_probability=0.0, synced_fraction=0.0, shadowing_db=0.0)


def _features(transmitters, link):
    sim = IqSimulator(NETWORK, link, seed=4)
    sims = [sim.generate(i, tx) for i, tx in enumerate(transmitters)]
    iq, mask, fs, offsets = assemble_batch([s.capture for s in sims], NETWORK.index(), 10_000)
    return extract_features(iq, mask, fs, offsets), mask


def _snr_db(transmitters, link):
    features, _mask = _features(transmitters, link)
    return features[0, :, FEATURE_NAMES.index("snr_db")]


def _posterior(transmitters, link=QUIET_LINK, drop=()):
    features, mask = _features(transmitters, link)
    mask[:, list(drop)] = 0.0
    features[:, list(drop)] = 0.0
    normalised = normalise_features(features, mask, CONTRACT.feature_mean, CONTRACT.feature_std)
    return run_power_grid(CONTRACT, REGION, normalised, mask)


def _error_m(out, lat, lon):
    east, north = CONTRACT.frame.to_enu(lat, lon)
    return float(np.hypot(out[0] * UNIT_M - float(east), out[1] * UNIT_M - float(north)))


def test_power_alone_finds_transmitters_heard_by_the_network():
    # A 4 × 4 sweep inside the network, the transmit power unknown to the grid.
    sites = [(lat, lon) for lat in np.linspace(44.6, 45.3, 4) for lon in np.linspace(7.5, 8.9, 4)]
    out = _posterior([Transmitter(lat, lon, 40.0, 145.0e6) for lat, lon in sites])
    assert out.shape == (len(sites), POWER_GRID_FEATURES) and np.isfinite(out).all()
    errors = [_error_m(row, lat, lon) for row, (lat, lon) in zip(out, sites, strict=True)]
    # Power alone: kilometres to tens of kilometres (always answering the centroid: ~64 km).
    assert np.median(errors) < 18_000 and max(errors) < 30_000, f"errors {np.round(errors)}"


def test_receivers_that_hear_nothing_narrow_the_posterior():
    # A weak transmitter near Genova: the receivers around Torino, 120 km away, hear nothing.
    tx = Transmitter(44.45, 8.90, 30.0, 435.0e6)
    link = dataclasses.replace(QUIET_LINK, path_loss_exponent=3.4)
    silent = [i for i, snr in enumerate(_snr_db([tx], link)) if snr <= SNR_FLOOR_DB]
    assert len(silent) >= 3, "the scenario needs receivers that hear nothing"
    with_silence = _posterior([tx], link)[0]
    without = _posterior([tx], link, drop=silent)[0]
    # Their silence rules out the region around them: a tighter posterior, no further off.
    assert with_silence[2] + with_silence[3] < without[2] + without[3]
    assert _error_m(with_silence, 44.45, 8.90) < _error_m(without, 44.45, 8.90) + 5_000


def test_the_prior_region_is_the_training_box_in_whole_cells():
    region = PriorRegion.of(np.array([[-10_500.0, 3_000.0], [20_100.0, 7_900.0]]))
    assert region.east == (-12_000.0, 24_000.0) and region.north == (0.0, 8_000.0)
    grid = region.grid()
    assert grid[:, 0].min() == -12_000.0 and grid[:, 0].max() == 24_000.0
    assert np.allclose(np.diff(np.unique(grid[:, 1])), SPACING_M)
