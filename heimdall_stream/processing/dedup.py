"""Dedup: which captures of a batch are new, and remembering the ones committed.

A capture is a repeat when Redis holds its done mark, when this instance committed it recently
(``RecentIds``: a bounded in-process memory that catches repeats while Redis is down or after it
lost its keyspace, counted apart because each would otherwise have been a duplicate result), or
when the same ``capture_id`` came earlier in the same batch, or is *claimed* by a batch that is
still being scored or committed (batches run on several worker threads at once).  A claim is
released after the commit, or when the batch is discarded to run again.

Marks are written in two steps around the commit, so that no crash opens a gap: just *before*
the transaction commits, each result's capture gets a *pending* mark naming the input record it
came from (``pending:topic:partition:offset``), and just after, the done mark.  A pending mark
stops every other record with that ``capture_id`` (an upstream repeat), even if the instance
dies between the commit and the done mark; it does not stop the very record it names, which is
consumed again only if its transaction did not commit (aborted, or the instance died first), so
a re-run is never mistaken for a repeat and nothing is lost.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence

from heimdall_stream.metrics import Metrics
from heimdall_stream.processing.records import Decoded, InputRecord, Result
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
    """Redis marks, the recent-id memory, in-flight claims and the in-batch check.

    Thread-safe: several workers check batches at once, and a capture id can be claimed by one
    of them only.
    """

    def __init__(self, store: Store, recent_ids: int, metrics: Metrics) -> None:
        self.store = store
        self.recent = RecentIds(recent_ids)
        self.metrics = metrics
        self._lock = threading.Lock()
        self._claimed: set[str] = set()

    def claim_fresh(self, items: Sequence[Decoded]) -> list[Decoded]:
        """The items whose capture is new; their ids are claimed until ``release``.

        A repeat of a capture that an earlier batch still holds is dropped here: that batch
        either commits it (and the repeat was a duplicate) or is discarded, and then every
        later batch is discarded with it and runs again.  Ids are claimed *before* Redis is
        asked, so a batch committing meanwhile (mark, then release) cannot slip between the
        two and let a repeat through.
        """
        claimed: list[Decoded] = []
        in_memory: list[str] = []
        with self._lock:
            for item in items:
                capture_id = item.capture.capture_id
                if capture_id in self._claimed:
                    continue
                if capture_id in self.recent:
                    in_memory.append(capture_id)
                    continue
                self._claimed.add(capture_id)
                claimed.append(item)
        ids = {item.capture.capture_id for item in claimed}
        # A pending mark of this very record is a re-run of an uncommitted transaction: fresh.
        own = {item.capture.capture_id: pending_mark(item.record) for item in claimed}
        done = self.store.filter_done(sorted(ids | set(in_memory)), own)
        if done & ids:
            self.release(done & ids)
        fresh = [item for item in claimed if item.capture.capture_id not in done]
        if len(items) > len(fresh):
            self.metrics.dedup_hits.inc(len(items) - len(fresh))
        # Repeats that only the in-process memory caught (Redis down, restarted, evicted).
        memory_only = sum(1 for capture_id in in_memory if capture_id not in done)
        if memory_only:
            self.metrics.dedup_memory_hits.inc(memory_only)
        return fresh

    def release(self, capture_ids: Iterable[str]) -> None:
        """Give up claims (after the commit, or when the batch is discarded)."""
        with self._lock:
            self._claimed.difference_update(capture_ids)

    def pend(self, results: Sequence[Result]) -> None:
        """Before the commit: pending marks, naming each result's input record (see above)."""
        if results:
            marks = {r.localization.capture_id: pending_mark(r.record) for r in results}
            self.store.mark_done(list(marks), marks)

    def remember(self, capture_ids: Sequence[str]) -> None:
        """Mark committed captures done, in memory and in the store."""
        with self._lock:
            self.recent.add(capture_ids)
        self.store.mark_done(capture_ids)


def pending_mark(record: InputRecord) -> bytes:
    """The mark a capture carries while the transaction of ``record``'s result commits."""
    return f"pending:{record.topic}:{record.partition}:{record.offset}".encode()
