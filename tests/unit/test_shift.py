"""The shift suite: variants, training randomisation, and the per-variant report."""

from __future__ import annotations

import dataclasses

import numpy as np

from heimdall_stream.lab.shift import HELD_OUT, MAX_TRAINING_AXES, NOMINAL, VARIANTS, RandomisedLinks
from heimdall_stream.lab.shift_eval import VariantResult, shift_table
from heimdall_stream.lab.simulator import CARRIER, DATA, FM, IqSimulator, LinkModel
from heimdall_stream.network import load_network

NETWORK = load_network()
# The fields a shift axis moves (everything but the fixed physics of the receivers).
MOVED = {f.name for f in dataclasses.fields(LinkModel)} - {"reference_distance_m", "full_scale_dbm"}


def _moved_axes(link: LinkModel) -> set[str]:
    return {name for name in MOVED if getattr(link, name) != getattr(NOMINAL, name)}


def test_every_axis_of_the_issue_has_a_variant():
    assert {
        "steep_path_loss",
        "noise_and_gain",
        "fm_voice",
        "carrier",
        "data_bursts",
        "key_up",
        "start_offsets_reported",
        "start_offsets_unreported",
        "oscillator_and_dc",
        "receivers_missing",
        "combined",
    } <= set(VARIANTS)
    assert set(VARIANTS) >= HELD_OUT
    assert len(_moved_axes(VARIANTS["combined"])) > 2 * MAX_TRAINING_AXES


def test_randomised_training_links_are_deterministic_and_hold_out_data_and_big_combinations():
    links = RandomisedLinks(seed=3)
    drawn = [links(i) for i in range(400)]
    assert drawn == [RandomisedLinks(seed=3)(i) for i in range(400)]
    assert all(link.modulation[2] == 0.0 for link in drawn)  # never data bursts
    assert sum(link == NOMINAL for link in drawn) >= 4  # some nominal captures remain
    assert sum(link.modulation == (0.0, 1.0, 0.0) for link in drawn) > 40
    # An axis moves up to three fields (path loss: exponent and shadowing, ...).
    assert max(len(_moved_axes(link)) for link in drawn) <= 3 * MAX_TRAINING_AXES


def test_nominal_link_draws_nothing_new():
    plain = IqSimulator(NETWORK, seed=4).generate(3)
    explicit = IqSimulator(NETWORK, VARIANTS["nominal"], seed=4).generate(3)
    assert plain == explicit
    assert plain.transmitter.modulation == FM and plain.transmitter.key_up_s == 0.0


def test_variants_generate_what_they_say():
    def first(name: str, count: int = 6):
        sim = IqSimulator(NETWORK, VARIANTS[name], seed=2)
        return [sim.generate(i) for i in range(count)]

    assert {s.transmitter.modulation for s in first("carrier")} == {CARRIER}
    assert {s.transmitter.modulation for s in first("data_bursts")} == {DATA}
    assert all(0.0 < s.transmitter.key_up_s < 0.2 for s in first("key_up"))
    offsets = [r.timestamp_offset_ns for s in first("start_offsets_reported") for r in s.capture.receivers]
    assert max(abs(o) for o in offsets if o is not None) > 5_000_000  # milliseconds apart, reported
    unreported = [
        r.timestamp_offset_ns for s in first("start_offsets_unreported", 10) for r in s.capture.receivers
    ]
    assert unreported.count(None) > len(unreported) / 2


def test_a_keyed_up_transmitter_is_silent_before_it_keys_up():
    link = dataclasses.replace(NOMINAL, offline_probability=0.0, key_up_probability=1.0)
    sim = IqSimulator(NETWORK, link, seed=1)
    capture = sim.generate(0)
    loudest = max(capture.capture.receivers, key=lambda r: capture.snr_db[r.receiver_id])
    power = np.abs(loudest.iq()[0] + 1j * loudest.iq()[1]) ** 2
    split = int(capture.transmitter.key_up_s * 50_000) - 100
    assert power[:split].mean() < power[split + 200 :].mean() / 10


def _result(name: str, median: float, coverage_95: float) -> VariantResult:
    return VariantResult(name, name in HELD_OUT, 100, median, 80_000.0, 0.7, coverage_95, 0.1)


def test_the_goal_needs_coverage_and_an_error_under_half_the_centroid_guess():
    assert _result("carrier", 30_000.0, 0.92).meets_goal
    assert not _result("carrier", 30_000.0, 0.85).meets_goal
    assert not _result("carrier", 41_000.0, 0.99).meets_goal
    table = shift_table([_result("data_bursts", 3_000.0, 0.95)])
    assert "| data_bursts | yes | 100 | 3.0 | 80.0 | 70.0 | 95.0 | 10 % | met |" in table
