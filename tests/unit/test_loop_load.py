"""The loop's busy share and the inline decision, on a clock the test moves (no threads, no Kafka)."""

from __future__ import annotations

import threading

from hypothesis import given
from hypothesis import strategies as st

from heimdall_stream.processing.records import InputRecord, ScoredBatch
from heimdall_stream.stream.loop_load import RESUME_SHARE, STOP_SHARE, WINDOW_S, LoopLoad
from heimdall_stream.stream.pipeline import BatchPipeline


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _window(load: LoopLoad, clock: Clock, *, idle_s: float, inline_s: float, captures: int) -> bool:
    """One window: ``captures`` arrive, the loop scores them inline in ``inline_s`` (if > 0),
    waits ``idle_s``, and is busy with everything else for the rest of the window."""
    load.submitted(captures)
    if inline_s:
        load.scored_inline(inline_s, captures)
    load.wait(lambda: setattr(clock, "now", clock.now + idle_s))
    clock.now += WINDOW_S - idle_s
    return load.inline_affordable()


def test_inline_stops_when_scoring_would_fill_the_loop_and_resumes_when_the_load_drops():
    clock = Clock()
    load = LoopLoad(clock)
    assert load.inline_affordable()  # nothing measured yet
    # 40 captures/s at 10 ms each inline (0.4 of the loop) + 0.3 other work: affordable.
    for _ in range(6):
        assert _window(load, clock, idle_s=0.15, inline_s=0.2, captures=20)
    assert abs(load.predicted_busy_share() - 0.7) < 0.02
    assert abs(load.share() - 0.7) < 0.02
    # 74 captures/s: inline scoring alone takes 0.74 of the loop, with commits more than all of it.
    for _ in range(6):
        on = _window(load, clock, idle_s=0.0, inline_s=0.37, captures=37)
    assert not on and load.predicted_busy_share() > STOP_SHARE
    # On the workers the loop only commits: it looks idle, but taking scoring back would refill it.
    for _ in range(6):
        assert not _window(load, clock, idle_s=0.2, inline_s=0.0, captures=37)
    # The load halves: it fits again, with room to spare.
    for _ in range(8):
        on = _window(load, clock, idle_s=0.35, inline_s=0.0, captures=10)
    assert on and load.predicted_busy_share() < RESUME_SHARE


def test_between_the_two_bounds_the_mode_in_force_is_kept():
    clock = Clock()
    load = LoopLoad(clock)
    # 0.8 predicted: above the resume bound, below the stop bound.
    for _ in range(10):
        assert _window(load, clock, idle_s=0.1, inline_s=0.2, captures=20)
    assert RESUME_SHARE < load.predicted_busy_share() < STOP_SHARE
    for _ in range(6):
        _window(load, clock, idle_s=0.0, inline_s=0.5, captures=50)
    assert not load.inline_affordable()
    for _ in range(10):
        on = _window(load, clock, idle_s=0.3, inline_s=0.0, captures=20)  # 0.4 + 0.4 predicted
    assert not on and RESUME_SHARE < load.predicted_busy_share() < STOP_SHARE


@given(
    idle=st.floats(0.0, WINDOW_S),
    inline=st.floats(0.0, WINDOW_S),
    captures=st.integers(0, 1000),
)
def test_shares_stay_between_zero_and_one(idle, inline, captures):
    clock = Clock()
    load = LoopLoad(clock)
    for _ in range(3):
        _window(load, clock, idle_s=idle, inline_s=min(inline, WINDOW_S - idle), captures=captures)
    assert 0.0 <= load.busy_share <= 1.0 and 0.0 <= load.share() <= 1.0


class Scorer:
    def __init__(self) -> None:
        self.threads: list[str] = []

    def process(self, records: list[InputRecord]) -> ScoredBatch:
        self.threads.append(threading.current_thread().name)
        return ScoredBatch(list(records), "b")


def test_the_pipeline_hands_small_batches_to_the_workers_while_the_loop_cannot_afford_them():
    clock, scorer = Clock(), Scorer()
    load = LoopLoad(clock)
    pipeline = BatchPipeline(scorer, workers=1, inline_max_captures=4, load=load)  # type: ignore[arg-type]
    record = InputRecord("in", 0, 0, None, b"", 0.0)
    pipeline.submit([record])
    pipeline.drain()
    assert scorer.threads[-1] == threading.current_thread().name
    for _ in range(6):  # a loop that is already full without scoring
        _window(load, clock, idle_s=0.0, inline_s=0.0, captures=10)
    pipeline.submit([record])
    pipeline.drain()
    pipeline.close()
    assert scorer.threads[-1].startswith("heimdall-batch")
