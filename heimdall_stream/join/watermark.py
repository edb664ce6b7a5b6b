"""Event time of one partition: the watermark, and which sets it closes.

The watermark is the newest event time (``window_start``) seen in the partition; a set closes
once the watermark reaches its event time + the window, and a part whose own window would be
closed by then is late.  Only the parts' timestamps move it, never the time they arrived, so a
replay of the same partition closes the same sets at the same parts.  One exception, because
event time stands still without traffic: after ``idle_ms`` of wall time without a part, the
watermark runs on with the wall clock from where the last part left it (``idle_target``), so
the last sets of a quiet partition close about ``window + idle_ms`` after their last part.
The move is not committed with what it closed: every emission commits the watermark from
*before* the part or idle tick that triggered it, so the sets an idle move closes commit the
watermark it started from (only the emissions of a later part carry the move along).  What it
closed stays closed after a restart because their parts are committed as done (skipped when
read again); event time resumes from the committed watermark and the parts read again, and a
partition still quiet runs on with the wall clock anew.
"""

from __future__ import annotations

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

    def idle_target(self, at_last_arrival: int, idle_beyond_ms: int) -> int:
        """Where an idle partition's watermark is: event time since the last part, run on by the wall clock.

        ``idle_beyond_ms`` is how long the partition has been idle beyond the grace ``idle_ms``,
        so the watermark only starts to move after the grace, and a set never closes before its
        window has passed in this extrapolated event time.
        """
        if at_last_arrival == UNSET:
            return self.value
        return at_last_arrival + idle_beyond_ms
