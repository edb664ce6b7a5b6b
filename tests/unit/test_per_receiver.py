"""Splitting simulated captures into per-receiver parts: fates, delays, keys, determinism."""

from __future__ import annotations

import itertools

import numpy as np

from heimdall_stream.join.keys import slot_key
from heimdall_stream.lab.arrivals import Arrivals
from heimdall_stream.lab.per_receiver import split
from heimdall_stream.lab.simulator import IqSimulator
from heimdall_stream.wire.codec import receiver_codec
from tests.helpers import NETWORK


def _split(arrivals: Arrivals, seed: int = 1):
    capture = IqSimulator(NETWORK, seed=4).generate(0).capture
    return capture, split(capture, 10.0, arrivals, np.random.default_rng(seed), itertools.count())


def test_every_receiver_is_on_time_late_or_missing_and_late_ones_come_after_the_window():
    arrivals = Arrivals(late_fraction=0.4, missing_fraction=0.2)
    capture, (key, parts, fate) = _split(arrivals)
    assert key == capture.capture_id
    ids = [r.receiver_id for r in capture.receivers]
    assert sorted(fate["on_time"] + fate["late"] + fate["missing"]) == sorted(ids)
    assert sorted(p.receiver_id for p in parts) == sorted(fate["on_time"] + fate["late"])
    for part in parts:
        delay = part.due_s - 10.0
        assert delay >= 1.5 * arrivals.window_ms / 1000 if part.late else delay < arrivals.window_ms / 1000
        decoded = receiver_codec().decode(part.value)
        assert decoded.transmission_key == key and decoded.expected_receivers == len(ids)
        assert decoded.window_start == capture.captured_at
    assert _split(arrivals)[1][2] == fate  # deterministic from the seed


def test_without_a_scheduler_the_key_is_the_frequency_and_time_slot():
    arrivals = Arrivals(scheduled=False)
    capture, (key, parts, _) = _split(arrivals)
    assert key == slot_key(capture.center_frequency_hz, capture.captured_at, slot_ms=1000, channel_hz=12_500)
    assert all(receiver_codec().decode(p.value).transmission_key == key for p in parts)
