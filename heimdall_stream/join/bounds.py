"""Bounds on the join's state, and which set gives way at a bound.

Three bounds: open sets (count), sample bytes they hold, and per partition the done parts
behind the oldest waiting one (their offsets go into the committed offset metadata, which
brokers cap at 4 KB by default: ``offset.metadata.max.bytes``; at most 2 bytes a part).  At the
first two, which are the whole join's, the set that has waited longest in any partition is
closed early with the receivers it has; at the third, the partition's oldest (lowest first
offset).  It counts as ``evicted`` and is emitted like any closed set (or dead-lettered as too
small).
Memory thus stays bounded under any input, at the price of a set that, under a replay without
the pressure, might have grown.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from heimdall_stream.join.window import OpenSet


@dataclass(frozen=True, slots=True)
class JoinBounds:
    """The limits of the join's state."""

    max_open_sets: int
    max_pending_bytes: int
    max_tracked_parts: int


def over_bound(bounds: JoinBounds, open_sets: int, pending_bytes: int, tracked: int) -> str | None:
    """Which bound is exceeded (for the log), or None."""
    if open_sets > bounds.max_open_sets:
        return f"{open_sets} open sets > {bounds.max_open_sets}"
    if pending_bytes > bounds.max_pending_bytes:
        return f"{pending_bytes} pending bytes > {bounds.max_pending_bytes}"
    if tracked > bounds.max_tracked_parts:
        return f"{tracked} done parts behind a waiting one > {bounds.max_tracked_parts}"
    return None


def oldest(sets: Iterable[OpenSet]) -> OpenSet | None:
    """The set of a partition that gives way at its own bound: the lowest first offset."""
    return min(sets, key=lambda s: s.first_offset, default=None)
