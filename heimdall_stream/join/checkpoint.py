"""What is committed for a receivers partition: the lowest uncommitted offset and the join's state.

A set is emitted when it closes, not in offset order, so the offset committed with it is the
lowest offset of a part still waiting (everything before it is done).  Parts after that offset
may be done already (their set was emitted): their offsets travel in the commit's metadata
with the watermark, so after a crash or a rebalance the parts re-read from the committed offset
are skipped when done and joined again when not, and the sets formed are the same.

``Tracker`` follows every part consumed since the last commit with the emission (``seq``) that
finished it; ``checkpoint(seq)`` is what a transaction that carries the emissions up to
``seq`` commits.  Metadata: ``hj1;w=<watermark ms>;d=<base64 of the done offsets after the
committed one, as varint deltas>``; bounded by the tracked parts (at most 2 bytes a part).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

from heimdall_stream.join.watermark import UNSET

VERSION = "hj1"
COMMITTED = 0  # the seq of parts already done in a committed transaction


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A committed (or to-be-committed) position of one partition and its join state."""

    offset: int
    watermark: int = UNSET
    done: tuple[int, ...] = ()  # offsets > offset whose parts are already done

    def metadata(self) -> str:
        """The commit metadata string of this checkpoint."""
        out = bytearray()
        previous = self.offset
        for offset in self.done:
            _varint(offset - previous, out)
            previous = offset
        return f"{VERSION};w={self.watermark};d={base64.b64encode(bytes(out)).decode()}"

    @classmethod
    def parse(cls, offset: int, metadata: str | None) -> Checkpoint:
        """The checkpoint of a committed offset; metadata that is not ours means no join state."""
        if not metadata or not metadata.startswith(VERSION + ";"):
            return cls(offset)
        fields = dict(item.split("=", 1) for item in metadata.split(";")[1:] if "=" in item)
        data = base64.b64decode(fields.get("d", ""))
        done: list[int] = []
        previous, position = offset, 0
        while position < len(data):
            delta, position = _read_varint(data, position)
            previous += delta
            done.append(previous)
        return cls(offset, int(fields.get("w", UNSET)), tuple(done))


class Tracker:
    """The parts of one partition consumed since its committed offset, and when each was done."""

    def __init__(self, committed: Checkpoint | None) -> None:
        self.committed = committed
        self.parts: dict[int, int | None] = {}  # offset → seq that finished it (None: waiting)
        self._skip = set(committed.done) if committed else set()

    def __len__(self) -> int:
        return len(self.parts)

    def seen(self, offset: int) -> bool:
        """Track a consumed part; True when it was done before the last restart (skip it)."""
        if offset in self._skip:
            self._skip.discard(offset)
            self.parts[offset] = COMMITTED
            return True
        self.parts.setdefault(offset, None)
        return False

    def exposure(self) -> int:
        """Done parts after the oldest waiting one: what a commit now would list in its metadata."""
        waiting = [o for o, s in self.parts.items() if s is None]
        if not waiting:
            return 0
        oldest = min(waiting)
        return sum(1 for o, s in self.parts.items() if s is not None and o > oldest)

    def done(self, offsets: list[int], seq: int) -> None:
        """These parts were finished by emission ``seq``."""
        for offset in offsets:
            self.parts[offset] = seq

    def checkpoint(self, seq: int, watermark: int) -> Checkpoint:
        """What to commit once every emission up to ``seq`` is written."""
        waiting = [o for o, s in self.parts.items() if s is None or s > seq]
        if waiting:
            offset = min(waiting)
        elif self.parts:
            offset = max(self.parts) + 1
        else:
            offset = self.committed.offset if self.committed else 0
        done = {o for o, s in self.parts.items() if s is not None and s <= seq and o > offset}
        # Parts done before the last restart and not read again yet stay done: left out, a
        # second restart would join them again into sets already emitted.
        done.update(o for o in self._skip if o > offset)
        return Checkpoint(offset, watermark, tuple(sorted(done)))

    def commit(self, checkpoint: Checkpoint) -> None:
        """A checkpoint was committed: forget the parts before it."""
        self.committed = checkpoint
        self.parts = {o: s for o, s in self.parts.items() if o >= checkpoint.offset}

    def rewind_to(self) -> int | None:
        """Where to seek to read every uncommitted part again (None: nothing consumed, no seek)."""
        if self.committed is not None:
            return self.committed.offset
        return min(self.parts) if self.parts else None


def _varint(value: int, out: bytearray) -> None:
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return


def _read_varint(data: bytes, position: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, position
