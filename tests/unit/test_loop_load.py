"""The loop's busy share and the inline decision, on clocks the test moves (no threads, no Kafka)."""

from __future__ import annotations

import threading
from functools import partial

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from heimdall_stream.processing.records import InputRecord, ScoredBatch
from heimdall_stream.stream.loop_load import (
    PROBE_S,
    RESUME_SHARE,
    STOP_SHARE,
    TRIAL_SHARE,
    WINDOW_S,
    LoopLoad,
)
from heimdall_stream.stream.pipeline import BatchPipeline


class Clock:
    """Wall time ``now``, and ``cpu``, the loop thread's CPU time, which only ``work`` moves."""

    def __init__(self) -> None:
        self.now = 0.0
        self.cpu = 0.0

    def __call__(self) -> float:
        return self.now

    def work(self, seconds: float) -> None:
        self.now += seconds
        self.cpu += seconds

    def pass_time(self, seconds: float) -> None:
        """Time the loop thread spends off the CPU: waiting, blocked, or queued for the GIL."""
        self.now += seconds

    def block(self, cpu_s: float, off_s: float) -> None:
        """A call that works ``cpu_s``, then blocks ``off_s`` (on the broker, say)."""
        self.work(cpu_s)
        self.pass_time(off_s)


def _load(clock: Clock) -> LoopLoad:
    # A hair shorter than the simulated windows, which float rounding may end just short of 0.5 s.
    return LoopLoad(clock, lambda: clock.cpu, window_s=WINDOW_S - 1e-9)


def _window(load: LoopLoad, clock: Clock, *, idle_s: float, inline_s: float, captures: int) -> bool:
    """One window: ``captures`` arrive, the loop scores them inline in ``inline_s`` (if > 0),
    waits ``idle_s``, and works on everything else for the rest of the window."""
    load.submitted(captures)
    if inline_s:
        load.score_inline(lambda: clock.work(inline_s), captures)
    load.wait(lambda: clock.pass_time(idle_s))
    clock.work(WINDOW_S - idle_s - inline_s)
    return load.inline_affordable()


def test_inline_stops_when_scoring_would_fill_the_loop_and_resumes_when_the_load_drops():
    clock = Clock()
    load = _load(clock)
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
    load = _load(clock)
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


_STEPS = st.lists(
    st.tuples(
        st.sampled_from(["work", "gil", "blocking", "wait", "wait_scoring", "wait_blocking", "score"]),
        st.floats(0.0, 2.0),
    ),
    max_size=60,
)


@given(steps=_STEPS)
@example(steps=[("score", 2.0)] * 4 + [("wait", 2.0)] * 5 + [("score", 0.0), ("work", 2.0)])  # a trial
def test_shares_stay_between_zero_and_one_whatever_the_loop_does(steps):
    """Work, GIL waits, blocking commits, waits, scoring or committing inside a wait (a rebalance
    callback) and windows closing anywhere."""
    clock = Clock()
    load = _load(clock)

    def score(seconds: float) -> None:
        load.inline_affordable()  # may close a window, as submit does
        load.score_inline(lambda: clock.work(seconds), 1)

    def wait_scoring(seconds: float) -> None:
        clock.pass_time(seconds)
        score(seconds / 2)
        clock.pass_time(seconds)

    def wait_blocking(seconds: float) -> None:
        clock.pass_time(seconds)
        load.inline_affordable()  # may close a window
        load.blocking(clock.block, seconds / 8, seconds / 2)
        clock.pass_time(seconds)

    for kind, seconds in steps:
        if kind == "work":
            clock.work(seconds)
        elif kind == "gil":
            clock.pass_time(seconds)
        elif kind == "blocking":
            load.blocking(clock.block, seconds / 4, seconds)
        elif kind == "wait":
            load.wait(partial(clock.pass_time, seconds))
        elif kind == "wait_scoring":
            load.wait(partial(wait_scoring, seconds))
        elif kind == "wait_blocking":
            load.wait(partial(wait_blocking, seconds))
        else:
            score(seconds)
        load.submitted(1)
        share = load.share()
        assert 0.0 <= load.busy_share <= share + 1e-9 <= 1.0 + 2e-9
        assert load.predicted_busy_share() >= 0.0


def test_while_off_one_batch_every_probe_interval_measures_the_cost_again():
    clock = Clock()
    load = _load(clock)
    _window(load, clock, idle_s=0.3, inline_s=0.1, captures=20)  # the first: warming up
    # 40 captures/s, but one stalled window (a Redis stall, say) makes them look 100 ms each.
    _window(load, clock, idle_s=0.0, inline_s=0.5, captures=5)
    for _ in range(3):
        on = _window(load, clock, idle_s=0.3, inline_s=0.0, captures=20)
    assert not on  # 0.4 of other work + 40/s x 100 ms
    assert not load.inline_affordable()
    load.wait(lambda: clock.pass_time(PROBE_S))
    assert load.predicted_busy_share() > TRIAL_SHARE  # too far off for a window of it
    assert load.inline_affordable()  # the probe: one batch scored inline ...
    assert not load.inline_affordable()  # ... and only one
    for _ in range(8):  # the probe, and what follows it, cost 5 ms a capture: 0.4 + 0.2
        load.score_inline(lambda: clock.work(0.005), 1)
        on = _window(load, clock, idle_s=0.3, inline_s=0.0, captures=20)
        load.inline_affordable()
    assert on and load.inline_s_per_capture is not None and load.inline_s_per_capture < 0.01


def test_a_wait_counts_as_idle_only_in_its_window_and_without_the_scoring_inside_it():
    clock = Clock()
    load = _load(clock)

    def poll_serving_a_revoke() -> None:
        clock.pass_time(1.0)  # idle in the first window, which closes below
        load.inline_affordable()
        load.score_inline(lambda: clock.work(0.2), 1)  # the revoke's batch, in the new window
        clock.pass_time(0.3)  # idle again

    load.wait(poll_serving_a_revoke)
    load.share()  # closes the second window: 0.3 s idle and 0.2 s scoring of 0.5 s
    # Both windows idle but for the scoring: the loop's whole share is the second's 0.4, smoothed.
    assert abs(load.busy_share) < 1e-9 and abs(load.loop_share - 0.5 * 0.4) < 1e-9


class Scorer:
    def __init__(self, clock: Clock | None = None) -> None:
        self.threads: list[str] = []
        self.clock = clock

    def process(self, records: list[InputRecord]) -> ScoredBatch:
        self.threads.append(threading.current_thread().name)
        if self.clock is not None:
            self.clock.work(0.01 * len(records))
        return ScoredBatch(list(records), "b")


def test_the_pipeline_measures_what_scoring_inline_costs():
    clock = Clock()
    load = _load(clock)
    pipeline = BatchPipeline(Scorer(clock), workers=1, inline_max_captures=4, load=load)  # type: ignore[arg-type]
    records = [InputRecord("in", 0, n, None, b"", 0.0) for n in range(2)]
    for _ in range(2):  # the first window warms up
        pipeline.submit(records)
        pipeline.drain()
        clock.pass_time(WINDOW_S)
        load.share()
    pipeline.close()
    assert load.inline_s_per_capture is not None and abs(load.inline_s_per_capture - 0.01) < 1e-9


def test_the_pipeline_hands_small_batches_to_the_workers_while_the_loop_cannot_afford_them():
    clock, scorer = Clock(), Scorer()
    load = _load(clock)
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


def test_a_window_must_have_a_length():
    with pytest.raises(ValueError):
        LoopLoad(Clock(), window_s=0.0)


def test_waiting_for_the_gil_while_workers_score_is_not_counted_as_the_loop_s_work():
    """W1 at 78/s: on the workers the loop's wall time is 0.4 busy, its CPU time 0.1."""
    clock = Clock()
    load = _load(clock)
    for _ in range(4):  # inline: 39 captures a window at 6 ms each, 0.05 s of other work
        assert _window(load, clock, idle_s=0.216, inline_s=0.234, captures=39)
    for _ in range(4):  # a backlog: the loop's work (and batches handed to workers) fills it
        on = _window(load, clock, idle_s=0.0, inline_s=0.0, captures=100)
    assert not on
    for _ in range(8):  # back to 78/s on the workers: 0.05 s work, 0.15 s queued for the GIL
        load.submitted(39)
        clock.work(0.05)
        clock.pass_time(0.15)
        load.wait(lambda: clock.pass_time(0.3))
        on = load.inline_affordable()
    assert abs(load.share() - 0.4) < 0.01  # the gauge: wall time
    assert on and abs(load.predicted_busy_share() - (0.1 + 78 * 0.006)) < 0.02


def test_a_commit_that_blocks_the_loop_counts_as_its_work():
    """Exactly once without overlap, the transaction runs on the loop: it consumes nothing then."""
    clock = Clock()
    load = _load(clock)
    for _ in range(8):  # 40 captures/s at 10 ms inline, 20 commits of 15 ms (1 ms of it CPU)
        load.submitted(20)
        load.score_inline(lambda: clock.work(0.2), 20)
        for _ in range(20):
            load.blocking(clock.block, 0.001, 0.014)
        load.wait(lambda: clock.pass_time(0.0))
        on = load.inline_affordable()
    assert not on and load.predicted_busy_share() > STOP_SHARE


def test_a_commit_served_inside_a_wait_is_work_not_idle():
    """A revoke served by poll commits what is scored: the loop blocks on it, it does not idle."""
    clock = Clock()
    load = _load(clock)

    def poll_serving_a_revoke() -> None:
        clock.pass_time(0.1)
        load.blocking(clock.block, 0.05, 0.25)
        clock.pass_time(0.1)

    load.wait(poll_serving_a_revoke)
    load.share()
    assert abs(load.busy_share - 0.5 * 0.6) < 1e-9 and abs(load.loop_share - 0.5 * 0.6) < 1e-9


def test_the_first_window_of_inline_scoring_warms_up_and_is_not_counted():
    """W1 at 43/s: 43-61 ms a capture in the first window after start-up, 14 ms after."""
    clock = Clock()
    load = _load(clock)
    assert _window(load, clock, idle_s=0.0, inline_s=0.43, captures=10)  # cold: 43 ms a capture
    assert load.inline_s_per_capture is None
    for _ in range(6):
        assert _window(load, clock, idle_s=0.14, inline_s=0.3, captures=21)
    assert load.inline_s_per_capture is not None and abs(load.inline_s_per_capture - 0.3 / 21) < 1e-3
    assert load.predicted_busy_share() < RESUME_SHARE


def _on_the_workers(load: LoopLoad, clock: Clock) -> int:
    """W1 at 43/s on the workers (0.17 of the loop's CPU time, probes read 22 ms a capture),
    until inline scoring is tried again: how many windows that took."""
    windows = 0
    while True:
        load.submitted(21)
        clock.work(0.085)
        clock.pass_time(0.1)  # queued for the GIL
        load.wait(lambda: clock.pass_time(0.315))
        windows += 1
        if load.inline_affordable():
            return windows
        assert RESUME_SHARE < load.predicted_busy_share() <= TRIAL_SHARE  # 0.17 + 43/s x 22 ms


def _stopped_by_a_slow_start(load: LoopLoad, clock: Clock) -> None:
    _window(load, clock, idle_s=0.3, inline_s=0.1, captures=20)  # warming up
    for _ in range(3):  # start-up: 22 ms a capture, and a burst
        on = _window(load, clock, idle_s=0.0, inline_s=0.44, captures=20)
    assert not on


def test_a_loop_on_the_workers_reading_high_tries_a_window_of_inline_scoring_and_keeps_it():
    clock = Clock()
    load = _load(clock)
    _stopped_by_a_slow_start(load, clock)
    assert _on_the_workers(load, clock) >= PROBE_S / WINDOW_S - 1
    for _ in range(3):  # the trial, and after: 14 ms a capture, other work 0.13, so 0.73
        on = _window(load, clock, idle_s=0.135, inline_s=0.3, captures=21)
        assert on
    assert abs(load.predicted_busy_share() - 0.73) < 0.03


def test_a_trial_window_the_loop_cannot_carry_hands_scoring_back_to_the_workers():
    clock = Clock()
    load = _load(clock)
    _stopped_by_a_slow_start(load, clock)
    _on_the_workers(load, clock)
    assert not _window(load, clock, idle_s=0.0, inline_s=0.42, captures=21)  # 20 ms each: 1.0
    assert _on_the_workers(load, clock) >= PROBE_S / WINDOW_S - 1  # until the next trial
