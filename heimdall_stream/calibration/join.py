"""A bounded join of results and truths by capture id, expiring unmatched entries on event time.

Results and truths come from two topics, in any order and at any relative delay.  Each waits
for its partner for ``window_s`` seconds of *event time* (when the capture was made, not when
its record arrived): the watermark is the newest event time seen on either side, and an entry
older than ``watermark - window_s`` is dropped as ``expired``; one that is already that old when it
arrives is dropped as ``late``.  At most ``max_pending`` entries wait per side; beyond that the
oldest (by event time) is dropped as ``evicted``.  The last ``max_pending`` matched capture ids
are remembered, so a second result or truth for one of them is dropped as ``duplicate``
instead of waiting forever; so is a second one while the first still waits (the first stays).

Nothing here reads a clock or Kafka: the caller feeds records and counts what ``add`` returns.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Generic, Literal, TypeVar

Side = Literal["result", "truth"]
SIDES: tuple[Side, Side] = ("result", "truth")
R = TypeVar("R")
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Dropped:
    """An entry that left the join without a partner, and why."""

    side: Side
    reason: Literal["expired", "late", "evicted", "duplicate"]
    capture_id: str


@dataclass(slots=True)
class Step(Generic[R, T]):
    """What one ``add`` did: the pair it completed (if any) and the entries it dropped."""

    matched: tuple[R, T] | None = None
    dropped: list[Dropped] = field(default_factory=list)


@dataclass(slots=True)
class _Waiting:
    event_time: float
    seq: int
    value: object


class TruthJoin(Generic[R, T]):
    """Pairs a result and a truth with the same capture id, in bounded memory."""

    def __init__(self, window_s: float, max_pending: int) -> None:
        if window_s <= 0 or max_pending < 1:
            raise ValueError("the join needs a positive window and room for at least one entry")
        self.window_s = window_s
        self.max_pending = max_pending
        self.watermark = float("-inf")
        self._pending: dict[Side, dict[str, _Waiting]] = {side: {} for side in SIDES}
        # (event_time, seq, capture_id) per side; entries already matched are skipped when popped.
        self._heaps: dict[Side, list[tuple[float, int, str]]] = {side: [] for side in SIDES}
        self._matched: OrderedDict[str, None] = OrderedDict()
        self._seq = 0

    def pending(self, side: Side) -> int:
        """Entries of ``side`` waiting for a partner."""
        return len(self._pending[side])

    def add_result(self, capture_id: str, event_time: float, result: R) -> Step[R, T]:
        """Offer a result; returns the completed pair, if its truth was waiting, and what was dropped."""
        return self._add("result", capture_id, event_time, result)

    def add_truth(self, capture_id: str, event_time: float, truth: T) -> Step[R, T]:
        """Offer a truth; returns the completed pair, if its result was waiting, and what was dropped."""
        return self._add("truth", capture_id, event_time, truth)

    def _add(self, side: Side, capture_id: str, event_time: float, value: object) -> Step[R, T]:
        step: Step[R, T] = Step()
        other: Side = "truth" if side == "result" else "result"
        self.watermark = max(self.watermark, event_time)
        self._expire(step)
        if capture_id in self._matched or capture_id in self._pending[side]:
            step.dropped.append(Dropped(side, "duplicate", capture_id))
            return step
        partner = self._pending[other].pop(capture_id, None)
        if partner is not None:
            self._remember(capture_id)
            pair = (value, partner.value) if side == "result" else (partner.value, value)
            step.matched = pair  # type: ignore[assignment]  # (R, T) by construction
            return step
        if event_time < self.watermark - self.window_s:
            step.dropped.append(Dropped(side, "late", capture_id))
            return step
        self._seq += 1
        self._pending[side][capture_id] = _Waiting(event_time, self._seq, value)
        heapq.heappush(self._heaps[side], (event_time, self._seq, capture_id))
        if len(self._pending[side]) > self.max_pending:
            self._pop_oldest(side, "evicted", step)
        self._compact(side)
        return step

    def _expire(self, step: Step[R, T]) -> None:
        horizon = self.watermark - self.window_s
        for side in SIDES:
            heap = self._heaps[side]
            while heap and heap[0][0] < horizon:
                self._pop_oldest(side, "expired", step)

    def _pop_oldest(self, side: Side, reason: Literal["expired", "evicted"], step: Step[R, T]) -> None:
        """Drop the oldest live entry of ``side`` (stale heap entries on the way are discarded)."""
        heap, pending = self._heaps[side], self._pending[side]
        while heap:
            _, seq, capture_id = heapq.heappop(heap)
            waiting = pending.get(capture_id)
            if waiting is not None and waiting.seq == seq:
                del pending[capture_id]
                step.dropped.append(Dropped(side, reason, capture_id))
                return

    def _remember(self, capture_id: str) -> None:
        self._matched[capture_id] = None
        if len(self._matched) > self.max_pending:
            self._matched.popitem(last=False)

    def _compact(self, side: Side) -> None:
        """Rebuild a heap grown with matched entries, so memory stays bounded by ``max_pending``."""
        heap, pending = self._heaps[side], self._pending[side]
        if len(heap) > 2 * self.max_pending + 64:
            self._heaps[side] = [(w.event_time, w.seq, key) for key, w in pending.items()]
            heapq.heapify(self._heaps[side])
