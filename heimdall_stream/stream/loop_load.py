"""How busy the stream loop is, and whether it can afford to score a small batch itself.

The loop thread is idle while it blocks for input (``poll``) or for a worker, and busy the rest
of the time: decoding, the join, committing, and scoring the small batches it keeps
(``batching.inline_max_captures``).  Scoring on the loop saves the hand-off and the GIL sharing
with a worker, but the loop consumes nothing meanwhile: once scoring on top of its other work
fills its time, captures queue behind it while the workers sit idle.  W2 at 74/s was the case:
about 10 ms of scoring and 7 ms of commit for each capture, one every 13.5 ms.

So inline scoring stops while the loop's *predicted* busy share with it,

    (work without inline scoring) + (captures/s × seconds per capture scored inline),

is above ``STOP_SHARE``, and resumes once it is back under ``RESUME_SHARE``.  The work without
inline scoring is the loop thread's own CPU time, plus the time off the CPU inside the calls
in which it blocks (``blocking``: a transaction or flush committed on the loop, the Redis
writes after it), and never more than its wall time neither waiting nor scoring.  Not its wall
time alone: while workers score, the loop's non-waiting wall time also holds its waits for the
GIL, which vanish once it scores alone (W1 at 78/s: 0.33-0.39 of the loop's wall time, 0.11 of
its CPU time, and forced inline scoring queued nothing).  The waits for the GIL on returning
from a blocking call still count; they are a few per commit.  Measured so, the prediction moves
much less with the mode, and the gap between the two bounds absorbs what does change with it
(commits per capture: batches handed to workers grow while a worker is busy), so the choice
does not flip on its own result.  The shares are measured over windows of ``WINDOW_S`` and
smoothed.

The prediction made on the workers still reads high, though: the loop's other work takes more of
its CPU time while it hands captures to the workers than while it scores them itself (W1 at
43/s: 0.16-0.17 against 0.12-0.13), and one batch scored inline after seconds without is slow
(18-22 ms a capture against 14 in a window of them).  Between the bounds a loop on the workers
would stay there (W1 at 43/s: predicted 1.1 on the workers, 0.70-0.86 scoring inline; p50 30 ms
against 24-25; W2 at 46/s: 26-28 against 24).  So while inline scoring is off it is tried again
every ``PROBE_S``: for a whole window, judged by that window alone, if the prediction is under
``TRIAL_SHARE``; else for one small batch, to measure its cost again.  A slow sample (a Redis
stall, a GC pause) or a model swapped for a cheaper one does not keep it off for good either.  A
trial at a load the loop cannot carry costs little: captures that queue behind it form batches
too large to score inline, which go to the workers.

The first window with inline scoring only warms up: its cost is not counted.  The first
scorings after start-up are slow (W1: 43-61 ms a capture in the first window, 15 in the
next), and smoothed into the next windows they stopped inline scoring at 43/s.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import ParamSpec, TypeVar

T = TypeVar("T")
P = ParamSpec("P")

WINDOW_S = 0.5
SMOOTHING = 0.5  # weight of the newest window
# Arrivals from receivers are close to periodic, so a queue forms only near a full loop.  With
# inline scoring always on: W1 at 48/s (about 5 ms scoring + 7 ms commit every 21 ms, 0.6)
# had a quarter lower p50 than on the workers; W2 at 74/s (10 + 7 ms every 13.5 ms, 1.25) 45 %
# higher.  The bounds sit between the two, nearer the full loop.
STOP_SHARE = 0.9
RESUME_SHARE = 0.75
PROBE_S = 10.0
# Above it a loop on the workers is not tried with inline scoring for a window: above the 1.1
# read on the workers where windows of inline scoring showed 0.70-0.86.
TRIAL_SHARE = 1.25


class LoopLoad:
    """The loop's busy share, arrival rate and inline scoring cost; decides inline scoring.

    ``clock`` is wall time; ``cpu_clock`` the calling (loop) thread's CPU time.
    """

    def __init__(
        self,
        clock: Callable[[], float],
        cpu_clock: Callable[[], float] = time.thread_time,
        window_s: float = WINDOW_S,
    ) -> None:
        if window_s <= 0:
            raise ValueError(f"window_s must be positive, not {window_s}")
        self.clock = clock
        self.cpu_clock = cpu_clock
        self.window_s = window_s
        self.busy_share = 0.0  # smoothed: CPU + blocking calls, without inline scoring
        self.loop_share = 0.0  # smoothed, wall time with inline scoring: the loop's whole busy share
        self.rate = 0.0  # captures handed to the pipeline per second, smoothed
        self.inline_s_per_capture: float | None = None  # unknown until a batch is scored inline
        self._warmed_up = False  # after the first window with inline scoring, not counted
        self.inline = True
        self._start = clock()
        self._cpu_start = cpu_clock()
        self._probe_at = self._start  # while off: when inline scoring is next tried
        self._trial = False  # the window in progress is a trial: it is judged alone
        self._idle_from: float | None = None  # inside a wait: since when it is not yet counted
        self._idle_s = 0.0
        self._inline_s = 0.0
        self._inline_cpu_s = 0.0
        self._blocked_s = 0.0  # wall time beyond CPU time inside blocking calls
        self._captures = 0
        self._inline_captures = 0

    def wait(self, call: Callable[[], T]) -> T:
        """Run ``call``, a blocking wait (for input or a worker), counting its time as idle.

        A window may close inside it: each window counts its own part of the wait.  And a
        rebalance callback served by ``poll`` may score and commit batches inside it: that is
        scoring and blocking, not idle.
        """
        self._idle_from = self.clock()
        try:
            return call()
        finally:
            self._count_idle()
            self._idle_from = None

    def blocking(self, call: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``call``, work in which the loop blocks (a commit on its thread): all of it busy."""
        start, cpu_start = self.clock(), self.cpu_clock()
        try:
            return call(*args, **kwargs)
        finally:
            wall, cpu = self.clock() - start, self.cpu_clock() - cpu_start
            self._not_idle(wall)
            self._blocked_s += max(0.0, wall - cpu)

    def score_inline(self, call: Callable[[], T], captures: int) -> T:
        """Run ``call``, the loop scoring ``captures`` itself (inside a wait too: not idle)."""
        start, cpu_start = self.clock(), self.cpu_clock()
        try:
            return call()
        finally:
            seconds, cpu = self.clock() - start, self.cpu_clock() - cpu_start
            self._not_idle(seconds)
            self._inline_s += seconds
            self._inline_cpu_s += cpu
            self._inline_captures += captures

    def submitted(self, captures: int) -> None:
        """``captures`` were handed to the pipeline (scored inline or not)."""
        self._captures += captures

    def predicted_busy_share(self) -> float:
        """The loop's busy share if it scored every capture itself (the last windows, smoothed)."""
        return self.busy_share + self.rate * (self.inline_s_per_capture or 0.0)

    def inline_affordable(self) -> bool:
        """Whether the loop may score a small batch itself now (see the module docstring)."""
        self._roll()
        if self.inline:
            return True
        now = self.clock()
        if now < self._probe_at:
            return False
        self._probe_at = now + PROBE_S
        if self.predicted_busy_share() <= TRIAL_SHARE:  # a window of it, judged by that window
            self._restart_window(now)
            self.inline = self._trial = True
        return True  # else one batch, to measure what scoring costs now

    def share(self) -> float:
        """The loop's whole busy share, inline scoring included (the last windows, smoothed)."""
        self._roll()
        return self.loop_share

    def _not_idle(self, seconds: float) -> None:
        """The last ``seconds`` of a wait in progress were spent working inside it."""
        if self._idle_from is not None:
            self._count_idle()
            self._idle_s = max(0.0, self._idle_s - seconds)

    def _count_idle(self) -> None:
        """Count the wait in progress as idle up to now."""
        if self._idle_from is not None:
            now = self.clock()
            self._idle_s += now - self._idle_from
            self._idle_from = now

    def _roll(self) -> None:
        now = self.clock()
        elapsed = now - self._start
        if elapsed < self.window_s:
            return
        self._count_idle()
        cpu_now = self.cpu_clock()
        weight = 1.0 if self._trial else SMOOTHING  # a trial is judged by its own window
        # Never above the wall time that was neither idle nor scoring (CPU spent inside a wait,
        # serving callbacks, is counted in both).
        wall_busy = max(0.0, elapsed - self._idle_s - self._inline_s)
        work = max(0.0, cpu_now - self._cpu_start - self._inline_cpu_s) + self._blocked_s
        self.busy_share = _smooth(self.busy_share, min(work, wall_busy) / elapsed, weight)
        self.loop_share = _smooth(self.loop_share, max(0.0, 1.0 - self._idle_s / elapsed), weight)
        self.rate = _smooth(self.rate, self._captures / elapsed, weight)
        if self._inline_captures and not self._warmed_up:
            self._warmed_up = True
        elif self._inline_captures:
            cost = self._inline_s / self._inline_captures
            previous = self.inline_s_per_capture
            self.inline_s_per_capture = cost if previous is None else _smooth(previous, cost, weight)
        predicted = self.predicted_busy_share()
        was_inline = self.inline
        self.inline = predicted <= (STOP_SHARE if was_inline else RESUME_SHARE)
        if was_inline and not self.inline:
            self._probe_at = now + PROBE_S
        self._restart_window(now)

    def _restart_window(self, now: float) -> None:
        """Start measuring a new window at ``now`` (a wait in progress counts in it from now)."""
        self._start, self._cpu_start = now, self.cpu_clock()
        if self._idle_from is not None:
            self._idle_from = now
        self._idle_s = self._inline_s = self._inline_cpu_s = self._blocked_s = 0.0
        self._captures = self._inline_captures = 0
        self._trial = False


def _smooth(old: float, new: float, weight: float = SMOOTHING) -> float:
    return (1.0 - weight) * old + weight * new
