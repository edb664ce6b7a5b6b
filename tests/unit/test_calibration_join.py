"""The bounded join of results and truths: every pair meets once, in any order; memory stays bounded."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from heimdall_stream.calibration.join import Dropped, TruthJoin


@st.composite
def interleavings(draw):
    """Results and truths of the same capture ids, arriving in any order within the window."""
    count = draw(st.integers(min_value=0, max_value=40))
    events = [("result", f"c{i}") for i in range(count)] + [("truth", f"c{i}") for i in range(count)]
    order = draw(st.permutations(events))
    times = {f"c{i}": draw(st.floats(min_value=0.0, max_value=50.0)) for i in range(count)}
    return order, times


@given(interleavings())
def test_every_result_meets_its_truth_once_whatever_the_order(case):
    order, times = case
    join: TruthJoin[str, str] = TruthJoin(window_s=60.0, max_pending=100)
    matched = []
    for side, capture_id in order:
        add = join.add_result if side == "result" else join.add_truth
        step = add(capture_id, times[capture_id], f"{side}-{capture_id}")
        assert step.dropped == []
        if step.matched is not None:
            matched.append(step.matched)
    assert sorted(matched) == sorted((f"result-{c}", f"truth-{c}") for c in times)
    assert join.pending("result") == join.pending("truth") == 0


@given(
    st.lists(st.tuples(st.booleans(), st.integers(0, 30), st.floats(0.0, 1000.0)), max_size=200),
    st.integers(min_value=1, max_value=8),
)
def test_memory_stays_bounded_and_every_entry_is_matched_dropped_or_waiting(arrivals, max_pending):
    join: TruthJoin[int, int] = TruthJoin(window_s=30.0, max_pending=max_pending)
    offered: dict[tuple[str, str], int] = {}
    out: dict[tuple[str, str], int] = {}
    for is_result, key, when in arrivals:
        side = "result" if is_result else "truth"
        capture_id = f"c{key}"
        step = (join.add_result if is_result else join.add_truth)(capture_id, when, key)
        offered[(side, capture_id)] = offered.get((side, capture_id), 0) + 1
        if step.matched is not None:
            for matched_side in ("result", "truth"):
                out[(matched_side, capture_id)] = out.get((matched_side, capture_id), 0) + 1
        for dropped in step.dropped:
            out[(dropped.side, dropped.capture_id)] = out.get((dropped.side, dropped.capture_id), 0) + 1
        assert join.pending("result") <= max_pending and join.pending("truth") <= max_pending
        assert len(join._heaps["result"]) <= 2 * max_pending + 65
    waiting = join.pending("result") + join.pending("truth")
    assert sum(offered.values()) == sum(out.values()) + waiting


def test_an_unmatched_entry_expires_when_event_time_passes_the_window():
    join: TruthJoin[str, str] = TruthJoin(window_s=10.0, max_pending=10)
    assert join.add_result("a", 100.0, "ra").dropped == []
    assert join.add_truth("b", 109.0, "tb").dropped == []
    step = join.add_truth("c", 111.0, "tc")  # watermark 111: "a" (100) is older than 101
    assert step.dropped == [Dropped("result", "expired", "a")]
    assert join.add_truth("a", 100.0, "ta").dropped == [Dropped("truth", "late", "a")]
    assert join.add_result("b", 111.0, "rb").matched == ("rb", "tb")


def test_beyond_max_pending_the_oldest_is_evicted():
    join: TruthJoin[str, str] = TruthJoin(window_s=1000.0, max_pending=2)
    join.add_result("a", 5.0, "ra")
    join.add_result("b", 1.0, "rb")
    step = join.add_result("c", 3.0, "rc")
    assert step.dropped == [Dropped("result", "evicted", "b")]
    assert join.pending("result") == 2


def test_a_second_result_or_truth_for_a_capture_is_a_duplicate():
    join: TruthJoin[str, str] = TruthJoin(window_s=100.0, max_pending=10)
    join.add_truth("a", 1.0, "ta")
    assert join.add_truth("a", 1.0, "ta2").dropped == [Dropped("truth", "duplicate", "a")]
    assert join.add_result("a", 1.0, "ra").matched == ("ra", "ta")  # the first truth stays
    assert join.add_result("a", 1.0, "ra2").dropped == [Dropped("result", "duplicate", "a")]
    assert join.pending("result") == 0


def test_a_join_without_room_or_window_is_refused():
    with pytest.raises(ValueError):
        TruthJoin(window_s=0.0, max_pending=1)
    with pytest.raises(ValueError):
        TruthJoin(window_s=1.0, max_pending=0)
