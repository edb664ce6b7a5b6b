"""How busy the stream loop is, and whether it can afford to score a small batch itself.

The loop thread is idle while it blocks for input (``poll``) or for a worker, and busy the rest
of the time: decoding, the join, committing, and scoring the small batches it keeps
(``batching.inline_max_captures``).  Scoring on the loop saves the hand-off and the GIL sharing
with a worker, but the loop consumes nothing meanwhile: once scoring on top of its other work
fills its time, captures queue behind it while the workers sit idle.  W2 at 74/s was the case:
about 10 ms of scoring and 7 ms of commit for each capture, one every 13.5 ms.

So inline scoring stops while the loop's *predicted* busy share with it,

    (busy share without inline scoring) + (captures/s × seconds per capture scored inline),

is above ``STOP_SHARE``, and resumes once it is back under ``RESUME_SHARE``.  The prediction is
the same in both modes, so the choice does not flip on its own result; the gap between the two
bounds absorbs what does change with the mode (commits per capture: batches handed to workers
grow while a worker is busy).  The shares are measured over windows of ``WINDOW_S`` and smoothed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

WINDOW_S = 0.5
SMOOTHING = 0.5  # weight of the newest window
# Arrivals from receivers are close to periodic, so a queue forms only near a full loop: at
# 0.8 predicted (W1 at 48/s) inline still halved the p50, at 1.2 (W2 at 74/s) it doubled it.
STOP_SHARE = 0.9
RESUME_SHARE = 0.75


class LoopLoad:
    """The loop's busy share, arrival rate and inline scoring cost; decides inline scoring."""

    def __init__(self, clock: Callable[[], float], window_s: float = WINDOW_S) -> None:
        self.clock = clock
        self.window_s = window_s
        self.busy_share = 0.0  # smoothed, without inline scoring
        self.loop_share = 0.0  # smoothed, with it: the loop's whole busy share
        self.rate = 0.0  # captures handed to the pipeline per second, smoothed
        self.inline_s_per_capture: float | None = None  # unknown until a batch is scored inline
        self.inline = True
        self._start = clock()
        self._idle_s = 0.0
        self._inline_s = 0.0
        self._captures = 0
        self._inline_captures = 0

    def wait(self, call: Callable[[], T]) -> T:
        """Run ``call``, a blocking wait (for input or a worker), counting its time as idle."""
        start = self.clock()
        try:
            return call()
        finally:
            self._idle_s += self.clock() - start

    def submitted(self, captures: int) -> None:
        """``captures`` were handed to the pipeline (scored inline or not)."""
        self._captures += captures

    def scored_inline(self, seconds: float, captures: int) -> None:
        """The loop spent ``seconds`` scoring ``captures`` itself."""
        self._inline_s += seconds
        self._inline_captures += captures

    def predicted_busy_share(self) -> float:
        """The loop's busy share if it scored every capture itself (the last windows, smoothed)."""
        return self.busy_share + self.rate * (self.inline_s_per_capture or 0.0)

    def inline_affordable(self) -> bool:
        """Whether the loop may score a small batch itself now (see the module docstring)."""
        self._roll()
        return self.inline

    def share(self) -> float:
        """The loop's whole busy share, inline scoring included (the last windows, smoothed)."""
        self._roll()
        return self.loop_share

    def _roll(self) -> None:
        now = self.clock()
        elapsed = now - self._start
        if elapsed < self.window_s:
            return
        busy = max(0.0, 1.0 - (self._idle_s + self._inline_s) / elapsed)
        self.busy_share = _smooth(self.busy_share, busy)
        self.loop_share = _smooth(self.loop_share, max(0.0, 1.0 - self._idle_s / elapsed))
        self.rate = _smooth(self.rate, self._captures / elapsed)
        if self._inline_captures:
            cost = self._inline_s / self._inline_captures
            previous = self.inline_s_per_capture
            self.inline_s_per_capture = cost if previous is None else _smooth(previous, cost)
        predicted = self.predicted_busy_share()
        self.inline = predicted <= (STOP_SHARE if self.inline else RESUME_SHARE)
        self._start, self._idle_s, self._inline_s = now, 0.0, 0.0
        self._captures = self._inline_captures = 0


def _smooth(old: float, new: float) -> float:
    return (1.0 - SMOOTHING) * old + SMOOTHING * new
