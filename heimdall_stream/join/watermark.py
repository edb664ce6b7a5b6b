"""Event time of one partition: the watermark, and which sets it closes.

The watermark is the newest event time (``window_start``) seen in the partition; a set closes
once the watermark reaches its event time + the window, and a part whose own window would be
closed by then is late.  Only the parts' timestamps move it, never the time they arrived, so a
replay of the same partition closes the same sets at the same parts.  One exception, because
event time stands still without traffic: after ``idle_s`` of wall time without a part, the
watermark is moved past every open set (``idle_target``); the move is part of the committed
state, so what it closed stays closed after a restart.
"""

from __future__ import annotations

from collections.abc import Iterable

UNSET = -(2**62)  # before any part: nothing is late, nothing closes


class Watermark:
    """The event-time watermark of one partition, in ms since the epoch."""

    def __init__(self, window_ms: int, value: int = UNSET) -> None:
        self.window_ms = window_ms
        self.value = value

    def observe(self, event_ms: int) -> None:
        """A part with this event time was accepted."""
        self.value = max(self.value, event_ms)

    def advance(self, to_ms: int) -> None:
        """Move the watermark forward (never back)."""
        self.value = max(self.value, to_ms)

    def closes(self, event_ms: int) -> bool:
        """Whether a window starting at ``event_ms`` is closed."""
        return event_ms + self.window_ms <= self.value

    def idle_target(self, open_event_ms: Iterable[int]) -> int:
        """Where the watermark moves after an idle spell: just past every open set's window."""
        return max((event + self.window_ms for event in open_event_ms), default=self.value)
