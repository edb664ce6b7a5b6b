"""Dedup: which captures of a batch are new, and remembering the ones committed.

A capture is a repeat when Redis holds its done mark, when this instance committed it recently
(``RecentIds``: a bounded in-process memory that catches repeats while Redis is down or after it
lost its keyspace, counted apart because each would otherwise have been a duplicate result), or
when the same ``capture_id`` came earlier in the same batch.  A capture is marked done only after
its result is committed, so a crash can cause a re-run, never a loss.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from heimdall_stream.metrics import Metrics
from heimdall_stream.processing.records import Decoded
from heimdall_stream.processing.store import Store


class RecentIds:
    """The most recent ``capacity`` committed capture ids, oldest forgotten first."""

    def __init__(self, capacity: int) -> None:
        self._ids: OrderedDict[str, None] = OrderedDict()
        self._capacity = capacity

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, capture_id: object) -> bool:
        return capture_id in self._ids

    def add(self, capture_ids: Sequence[str]) -> None:
        """Remember ids (refreshing ones already known) and forget beyond the capacity."""
        if self._capacity <= 0:
            return
        for capture_id in capture_ids:
            self._ids[capture_id] = None
            self._ids.move_to_end(capture_id)
        while len(self._ids) > self._capacity:
            self._ids.popitem(last=False)


class Deduplicator:
    """Redis marks, the recent-id memory and the in-batch check, in that order."""

    def __init__(self, store: Store, recent_ids: int, metrics: Metrics) -> None:
        self.store = store
        self.recent = RecentIds(recent_ids)
        self.metrics = metrics

    def fresh(self, items: Sequence[Decoded]) -> list[Decoded]:
        """The items whose capture was not done before and is not repeated earlier in ``items``."""
        done = self.store.filter_done(sorted({item.capture.capture_id for item in items}))
        fresh: list[Decoded] = []
        seen: set[str] = set()
        memory_only = 0
        for item in items:
            capture_id = item.capture.capture_id
            if capture_id in done or capture_id in seen:
                continue
            if capture_id in self.recent:
                memory_only += 1  # Redis forgot it (down, restarted, evicted): a duplicate averted
                continue
            seen.add(capture_id)
            fresh.append(item)
        if len(items) > len(fresh):
            self.metrics.dedup_hits.inc(len(items) - len(fresh))
        if memory_only:
            self.metrics.dedup_memory_hits.inc(memory_only)
        return fresh

    def remember(self, capture_ids: Sequence[str]) -> None:
        """Mark committed captures done, in memory and in the store."""
        self.recent.add(capture_ids)
        self.store.mark_done(capture_ids)
