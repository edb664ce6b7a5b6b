"""The state of one set being assembled: its parts by receiver, its anchor, and what it accepts.

The first part of a set (in offset order) is its anchor: the set's event time and centre
frequency are the anchor's, and every later part must agree with them within the tolerances.
A second part from a receiver already in the set is a repeat, never a replacement: the first
one that arrived is kept, so a replay forms the same set whatever else came after.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from heimdall_stream.join.parts import Part


class Refusal(StrEnum):
    """Why a set refuses a part (the dead-letter reason)."""

    DUPLICATE = "duplicate"
    MISMATCH = "mismatch"


@dataclass(frozen=True, slots=True)
class Tolerances:
    """How far a part may differ from its set's anchor."""

    time_ms: float
    frequency_hz: float


@dataclass(slots=True)
class OpenSet:
    """A set waiting for its receivers or for its window to close."""

    key: str
    anchor: Part
    expected: int  # receivers that complete it; 0 = only its window closes it
    parts: dict[str, Part] = field(default_factory=dict)
    size: int = 0

    @classmethod
    def start(cls, part: Part, expected: int) -> OpenSet:
        """A new set anchored on its first part."""
        opened = cls(part.key, part, expected)
        opened.parts[part.capture.receiver_id] = part
        opened.size = part.size
        return opened

    @property
    def event_ms(self) -> int:
        """The set's event time: its anchor's window start."""
        return self.anchor.event_ms

    @property
    def first_offset(self) -> int:
        """The lowest offset of its parts (the anchor's: parts arrive in offset order)."""
        return self.anchor.record.offset

    @property
    def complete(self) -> bool:
        """Whether every expected receiver has arrived."""
        return self.expected > 0 and len(self.parts) >= self.expected

    def refusal(self, part: Part, tolerances: Tolerances) -> tuple[Refusal, str] | None:
        """Why ``part`` cannot join this set, or None when it can."""
        receiver = part.capture.receiver_id
        if receiver in self.parts:
            return Refusal.DUPLICATE, f"receiver {receiver} is already in set {self.key}"
        anchor = self.anchor.capture
        drift_ms = abs(part.capture.window_start - anchor.window_start).total_seconds() * 1000.0
        if drift_ms > tolerances.time_ms:
            return Refusal.MISMATCH, f"window start {drift_ms:.1f} ms from set {self.key}'s"
        drift_hz = abs(part.capture.center_frequency_hz - anchor.center_frequency_hz)
        if drift_hz > tolerances.frequency_hz:
            return Refusal.MISMATCH, f"centre frequency {drift_hz:.0f} Hz from set {self.key}'s"
        return None

    def add(self, part: Part) -> None:
        """Take a part that ``refusal`` accepted."""
        self.parts[part.capture.receiver_id] = part
        self.size += part.size
