"""IQ simulator: determinism, physics, missing receivers, near-duplicate sites."""

from __future__ import annotations

import numpy as np

from heimdall_stream.lab.simulator import IqSimulator, LinkModel, Transmitter
from heimdall_stream.network import load_network
from heimdall_stream.wire.codec import capture_codec
from heimdall_stream.wire.messages import SampleFormat

NETWORK = load_network()


def test_shipped_network_has_the_seven_sites_including_near_duplicates():
    assert NETWORK.ids == (
        "aquila-giaveno",
        "montanaro",
        "torino",
        "coazze",
        "passo-del-giovi",
        "genova",
        "milano-baggio",
    )
    by_id = {r.id: r for r in NETWORK.receivers}
    assert by_id["aquila-giaveno"].altitude_m == 600.0 and by_id["coazze"].altitude_m == 700.0


def test_same_seed_same_capture_and_different_seed_differs():
    a = IqSimulator(NETWORK, seed=1).generate(42)
    b = IqSimulator(NETWORK, seed=1).generate(42)
    c = IqSimulator(NETWORK, seed=2).generate(42)
    assert a == b
    assert a.capture.receivers[0].samples != c.capture.receivers[0].samples


def test_reference_size_and_formats():
    sim = IqSimulator(NETWORK, LinkModel(offline_probability=0.0), seed=0)
    capture = sim.generate(0).capture
    assert len(capture.receivers) == 7
    assert all(r.sample_count == 10_000 and r.sample_format is SampleFormat.CI16 for r in capture.receivers)
    assert 270_000 < len(capture_codec().encode(capture)) < 290_000
    cf32 = IqSimulator(NETWORK, sample_format=SampleFormat.CF32, seed=0).generate(0).capture
    assert cf32.receivers[0].iq().shape == (2, 10_000)


def test_power_falls_with_distance():
    sim = IqSimulator(NETWORK, LinkModel(offline_probability=0.0, shadowing_db=0.0), seed=0)
    near_torino = sim.generate(0, Transmitter(45.05, 7.68, 37.0, 145e6))
    assert near_torino.received_power_dbm["torino"] > near_torino.received_power_dbm["genova"] + 20


def test_some_receivers_go_offline_but_never_fewer_than_three():
    sim = IqSimulator(NETWORK, LinkModel(offline_probability=0.9), seed=0)
    counts = [len(sim.generate(i).capture.receivers) for i in range(30)]
    assert min(counts) >= 3 and max(counts) < 7


def test_ci16_samples_are_scaled_into_minus_one_one():
    iq = IqSimulator(NETWORK, seed=0).generate(1).capture.receivers[0].iq()
    assert iq.dtype == np.float32 and np.abs(iq).max() <= 1.0
