"""MicroBatcher with a fake clock: size and age triggers, forced flush, dropping."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from heimdall_stream.stream.batching import MicroBatcher


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_full_batch_is_ready_at_once():
    clock = FakeClock()
    batcher = MicroBatcher(3, 1.0, clock)
    for i in range(3):
        assert not batcher.ready()
        batcher.add(i)
    assert batcher.ready()
    assert batcher.take() == [0, 1, 2]
    assert len(batcher) == 0 and batcher.time_left() == 1.0


def test_partial_batch_waits_for_the_oldest_item():
    clock = FakeClock()
    batcher = MicroBatcher(10, 0.5, clock)
    batcher.add("a")
    clock.now = 0.3
    batcher.add("b")
    assert batcher.take() == []
    assert batcher.time_left() == pytest.approx(0.2)
    clock.now = 0.5
    assert batcher.take() == ["a", "b"]


def test_force_takes_everything():
    batcher = MicroBatcher(2, 10.0, FakeClock())
    for i in range(5):
        batcher.add(i)
    assert batcher.take(force=True) == [0, 1, 2, 3, 4]


@given(st.lists(st.integers(), max_size=50), st.integers(1, 8))
def test_batches_preserve_order_and_never_exceed_max_size(items, size):
    batcher = MicroBatcher(size, 0.0, FakeClock())
    out = []
    for item in items:
        batcher.add(item)
        while batch := batcher.take():
            assert len(batch) <= size
            out.extend(batch)
    assert out == items


def test_bad_parameters_are_refused():
    with pytest.raises(ValueError):
        MicroBatcher(0, 1.0)
    with pytest.raises(ValueError):
        MicroBatcher(1, -1.0)
