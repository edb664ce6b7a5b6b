"""Micro-batching with an injected clock, so tests are deterministic.

A ``MicroBatcher`` collects items until it holds ``max_size`` of them or its oldest item has
waited ``max_wait_s``; then ``take`` hands the batch out.  Every age it computes comes from the
clock injected at construction (``time.monotonic`` by default), never from the wall clock, so a
test drives it with a fake clock and no sleeping.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")
Clock = Callable[[], float]


class MicroBatcher(Generic[T]):
    """Groups items into batches of at most ``max_size``, none older than ``max_wait_s``."""

    def __init__(self, max_size: int, max_wait_s: float, clock: Clock = time.monotonic) -> None:
        if max_size < 1:
            raise ValueError(f"max_size must be >= 1, got {max_size}")
        if max_wait_s < 0:
            raise ValueError(f"max_wait_s must be >= 0, got {max_wait_s}")
        self.max_size = max_size
        self.max_wait_s = max_wait_s
        self.clock = clock
        self._items: list[T] = []
        self._first_at: float | None = None

    def __len__(self) -> int:
        return len(self._items)

    @property
    def room(self) -> int:
        """How many more items fit before the batch is full."""
        return max(self.max_size - len(self._items), 0)

    def add(self, item: T) -> None:
        """Queue one item; the wait of a batch starts with its first item."""
        if not self._items:
            self._first_at = self.clock()
        self._items.append(item)

    def time_left(self) -> float:
        """Seconds until the current batch is due (``max_wait_s`` when empty, 0 when due)."""
        if self._first_at is None:
            return self.max_wait_s
        return max(self._first_at + self.max_wait_s - self.clock(), 0.0)

    def ready(self) -> bool:
        """Whether a batch is due: full, or its oldest item has waited long enough."""
        return bool(self._items) and (len(self._items) >= self.max_size or self.time_left() <= 0.0)

    def take(self, force: bool = False) -> list[T]:
        """The due batch (up to ``max_size`` items), or everything with ``force``; else []."""
        if not (force or self.ready()):
            return []
        batch, self._items = self._items[: self.max_size], self._items[self.max_size :]
        if force and self._items:
            batch, self._items = batch + self._items, []
        self._first_at = self.clock() if self._items else None
        return batch
