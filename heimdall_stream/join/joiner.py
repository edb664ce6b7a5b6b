"""The join itself, without Kafka: parts in, closed sets and dead letters out, in a replayable order.

Per partition: the open sets by transmission key, the sets already emitted whose window is
still open (so a repeat is told from a late part), the watermark, and the tracker of consumed
offsets.  ``accept`` takes one consumed part; ``tick`` closes the sets of idle partitions.
Both return the records for the batch path: one ``InputRecord`` per emitted set (the adapter's
whole capture) and the part's own record for every part dead-lettered; ``letter`` tells the
batch path which is which.  Every emission gets a sequence number, so that ``checkpoint`` can
say what a transaction carrying some of them may commit.

A part, in this order: done before the last restart → skipped; undecodable → dead letter; its
set is open → joins it (or is a ``duplicate``/``mismatch``); its set was emitted → ``duplicate``
(same receiver) or ``late``; its window is closed → ``late``; else it opens a set.  Then the
watermark moves and closes what it passed: a closed set with ``min_receivers`` is emitted
(``partial``; ``complete`` when every expected receiver came first), a smaller one is
dead-lettered part by part (``too_few``, counted as ``expired``).
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

from heimdall_stream.errors import InternalError
from heimdall_stream.join.assemble import record_of
from heimdall_stream.join.bounds import JoinBounds, oldest, over_bound
from heimdall_stream.join.checkpoint import Checkpoint, Tracker
from heimdall_stream.join.parts import Part, decode_part, rejected
from heimdall_stream.join.watermark import UNSET, Watermark
from heimdall_stream.join.window import OpenSet, Tolerances
from heimdall_stream.processing.records import DeadLetter, InputRecord
from heimdall_stream.service_settings import JoinSettings


@dataclass(frozen=True, slots=True)
class Emission:
    """What one emitted record stands for (applied to the metrics once it is committed)."""

    seq: int
    watermark: int
    outcome: str | None = None  # complete / partial / expired / evicted, once per set
    receivers: int = 0
    wait_s: float | None = None
    letter: DeadLetter | None = None


@dataclass
class _Partition:
    watermark: Watermark
    tracker: Tracker
    last_arrival: float
    # The watermark before the part (or idle tick) being handled: what its emissions commit, so
    # that a restart re-reads that part, and the parts still waiting, under the same event time.
    step_watermark: int = UNSET
    arrival_watermark: int = UNSET  # the watermark when the last part arrived (idle time runs on from it)
    open: dict[str, OpenSet] = field(default_factory=dict)
    emitted: dict[str, tuple[int, frozenset[str]]] = field(default_factory=dict)
    # The same sets by event time, so that each part finds what its watermark closes without
    # scanning every set of the window (entries of sets gone meanwhile are skipped when popped).
    open_by_event: list[tuple[int, int, str]] = field(default_factory=list)  # (event, first offset, key)
    emitted_by_event: list[tuple[int, str]] = field(default_factory=list)  # (event, key)


class Joiner:
    """Joins parts into sets, per partition, on event time."""

    def __init__(self, settings: JoinSettings, max_part_bytes: int) -> None:
        self.settings = settings
        self.max_part_bytes = max_part_bytes
        self.tolerances = Tolerances(settings.time_tolerance_ms, settings.frequency_tolerance_hz)
        self.bounds = JoinBounds(
            settings.max_open_sets, settings.max_pending_bytes, settings.max_tracked_parts
        )
        self.partitions: dict[int, _Partition] = {}
        self.emissions: dict[tuple[int, int], Emission] = {}
        self.pending_bytes = 0
        self.evictions: list[str] = []  # why sets were closed early (drained by the caller's log)
        self._seq = itertools.count(1)

    # ------------------------------------------------------------------ partitions

    def assign(self, partition: int, committed: Checkpoint | None, now: float) -> None:
        """Start joining a partition from its committed checkpoint (None: never committed)."""
        self.forget(partition)
        watermark = Watermark(self.settings.window_ms)
        if committed is not None:
            watermark.advance(committed.watermark)
        self.partitions[partition] = _Partition(watermark, Tracker(committed), now)

    def forget(self, partition: int) -> None:
        """Drop a partition's state (revoked, lost, or about to be re-read)."""
        state = self.partitions.pop(partition, None)
        if state is not None:
            self.pending_bytes -= sum(s.size for s in state.open.values())
        self.emissions = {k: e for k, e in self.emissions.items() if k[0] != partition}

    def reset(self, now: float) -> dict[int, int]:
        """Throw away everything uncommitted; return where to seek each partition to re-read it."""
        seeks: dict[int, int] = {}
        for partition, state in list(self.partitions.items()):
            target = state.tracker.rewind_to()
            if target is not None:
                seeks[partition] = target
            self.assign(partition, state.tracker.committed, now)
        return seeks

    @property
    def open_sets(self) -> int:
        """Sets waiting, over every partition."""
        return sum(len(state.open) for state in self.partitions.values())

    # ------------------------------------------------------------------ parts in, records out

    def accept(self, record: InputRecord, now: float) -> list[InputRecord]:
        """Take one consumed part; return the records it made ready for the batch path."""
        state = self.partitions.get(record.partition)
        if state is None:
            # The stream hands over parts of assigned partitions only; a part dropped here would
            # be committed past without a trace, so this is a bug to stop on.
            raise InternalError(
                f"a part of {record.topic}[{record.partition}], a partition the join does not hold"
            )
        state.step_watermark = state.watermark.value
        out: list[InputRecord] = []
        if state.tracker.seen(record.offset):
            self._observe_skipped(state, record)
            self._close_due(state, now, out)  # what this part closed before the restart, if not committed
            return out
        state.last_arrival = now
        decoded = decode_part(record, self.max_part_bytes)
        if isinstance(decoded, DeadLetter):
            self._dead_letter(state, decoded, out)
            return out
        self._place(state, decoded, now, out)
        state.arrival_watermark = state.watermark.value
        self._close_due(state, now, out)
        self._enforce_bounds(state, now, out)
        return out

    def tick(self, now: float) -> list[InputRecord]:
        """In partitions without a part for ``idle_ms``, let event time run on with the wall clock."""
        out: list[InputRecord] = []
        idle_ms = self.settings.idle_ms
        for state in self.partitions.values():
            idle_for_ms = int((now - state.last_arrival) * 1000)
            if state.open and idle_for_ms >= idle_ms:
                state.step_watermark = state.watermark.value
                state.watermark.advance(
                    state.watermark.idle_target(state.arrival_watermark, idle_for_ms - idle_ms)
                )
                self._close_due(state, now, out)
        return out

    def flush(self, now: float) -> list[InputRecord]:
        """Close every open set now (the end of an offline replay)."""
        out: list[InputRecord] = []
        for state in self.partitions.values():
            state.step_watermark = state.watermark.value
            state.watermark.advance(
                max((s.event_ms + state.watermark.window_ms for s in state.open.values()), default=0)
            )
            self._close_due(state, now, out)
        return out

    def letter(self, record: InputRecord) -> DeadLetter | None:
        """The dead letter a record emitted by the join stands for (None: a set or not ours)."""
        emission = self.emissions.get((record.partition, record.offset))
        return emission.letter if emission is not None else None

    # ------------------------------------------------------------------ commits

    def checkpoints(self, records: Sequence[InputRecord]) -> dict[int, Checkpoint]:
        """What committing these emitted records may commit, per partition."""
        latest: dict[int, Emission] = {}
        for record in records:
            emission = self.emissions.get((record.partition, record.offset))
            current = latest.get(record.partition)
            if emission is not None and (current is None or emission.seq > current.seq):
                latest[record.partition] = emission
        return {
            partition: self.partitions[partition].tracker.checkpoint(emission.seq, emission.watermark)
            for partition, emission in latest.items()
            if partition in self.partitions
        }

    def committed(self, checkpoints: dict[int, Checkpoint], records: Sequence[InputRecord]) -> list[Emission]:
        """Checkpoints were committed with these records: trim the state; return their emissions."""
        for partition, checkpoint in checkpoints.items():
            if partition in self.partitions:
                self.partitions[partition].tracker.commit(checkpoint)
        return [e for r in records if (e := self.emissions.pop((r.partition, r.offset), None)) is not None]

    # ------------------------------------------------------------------ internals

    def _observe_skipped(self, state: _Partition, record: InputRecord) -> None:
        """A part done before the restart still moves event time as it did then."""
        decoded = decode_part(record, self.max_part_bytes)
        if isinstance(decoded, Part):
            state.watermark.observe(decoded.event_ms)
            if not state.watermark.closes(decoded.event_ms) and decoded.key not in state.open:
                # Its set was emitted before the restart and its window is still open: a repeat
                # of it is a duplicate, as it would have been without the restart.
                known = state.emitted.get(decoded.key)
                event, receivers = known or (decoded.event_ms, frozenset())
                state.emitted[decoded.key] = (event, receivers | {decoded.capture.receiver_id})
                if known is None:
                    heapq.heappush(state.emitted_by_event, (event, decoded.key))

    def _place(self, state: _Partition, part: Part, now: float, out: list[InputRecord]) -> None:
        key, receiver = part.key, part.capture.receiver_id
        opened = state.open.get(key)
        if opened is not None:
            refusal = opened.refusal(part, self.tolerances)
            if refusal is not None:
                self._dead_letter(state, rejected(part.record, refusal[0].value, refusal[1]), out)
                return
            opened.add(part)
            self.pending_bytes += part.size
            state.watermark.observe(part.event_ms)
            if opened.complete:
                self._emit(state, opened, "complete", now, out)
            return
        if key in state.emitted:
            _, receivers = state.emitted[key]
            reason = "duplicate" if receiver in receivers else "late"
            self._dead_letter(state, rejected(part.record, reason, f"set {key} was already emitted"), out)
            return
        if state.watermark.closes(part.event_ms):
            message = f"window of {key} closed (watermark {state.watermark.value} ms)"
            self._dead_letter(state, rejected(part.record, "late", message), out)
            return
        expected = part.capture.expected_receivers or self.settings.expected_receivers
        opened = OpenSet.start(part, expected)
        state.open[key] = opened
        heapq.heappush(state.open_by_event, (opened.event_ms, opened.first_offset, key))
        self.pending_bytes += part.size
        state.watermark.observe(part.event_ms)
        if opened.complete:
            self._emit(state, opened, "complete", now, out)

    def _close_due(self, state: _Partition, now: float, out: list[InputRecord]) -> None:
        """Emit the open sets the watermark closes (by event time, first offset); forget passed ones."""
        watermark, waiting = state.watermark, state.open_by_event
        due: list[OpenSet] = []
        while waiting and watermark.closes(waiting[0][0]):
            _, first_offset, key = heapq.heappop(waiting)
            opened = state.open.get(key)
            if opened is not None and opened.first_offset == first_offset:  # else: emitted already
                due.append(opened)
        for closed in due:
            self._emit(state, closed, "partial", now, out)
        passed = state.emitted_by_event
        while passed and watermark.closes(passed[0][0]):
            _, key = heapq.heappop(passed)
            entry = state.emitted.get(key)
            if entry is not None and watermark.closes(entry[0]):
                del state.emitted[key]

    def _enforce_bounds(self, state: _Partition, now: float, out: list[InputRecord]) -> None:
        """Close sets early until the state is within its bounds again.

        The open-set and byte bounds are the whole join's: the set that gives way is the one
        that has waited longest in any partition (first consumed), not one of the partition
        that happened to receive the last part, which would evict every new set on arrival
        while another partition held the state.  The tracked-parts bound is per partition.
        """
        while True:
            # Parts done but not yet committed go once their batch commits: only the done parts
            # behind a waiting one (the offset metadata's size) count against the bound.
            tracked = state.tracker.exposure() if len(state.tracker) > self.bounds.max_tracked_parts else 0
            reason = over_bound(self.bounds, self.open_sets, self.pending_bytes, tracked)
            if reason is None:
                return
            owner: _Partition | None = state
            if tracked > self.bounds.max_tracked_parts:
                victim = oldest(state.open.values())
            else:
                owner, victim = self._longest_waiting()
            if owner is None or victim is None:
                return
            self.evictions.append(f"set {victim.key} closed early: {reason}")
            if owner is not state:
                owner.step_watermark = owner.watermark.value  # its own event time, not this part's
            self._emit(owner, victim, "evicted", now, out)

    def _longest_waiting(self) -> tuple[_Partition | None, OpenSet | None]:
        """The open set first consumed, over every partition, and its partition's state."""
        candidates = [
            (s.anchor.record.consumed_at, s.first_offset, p, s)
            for p in self.partitions.values()
            for s in p.open.values()
        ]
        if not candidates:
            return None, None
        _, _, owner, victim = min(candidates, key=lambda c: (c[0], c[1]))
        return owner, victim

    def _emit(
        self, state: _Partition, closed: OpenSet, outcome: str, now: float, out: list[InputRecord]
    ) -> None:
        del state.open[closed.key]
        self.pending_bytes -= closed.size
        state.emitted[closed.key] = (closed.event_ms, frozenset(closed.parts))
        heapq.heappush(state.emitted_by_event, (closed.event_ms, closed.key))
        seq, watermark = next(self._seq), state.step_watermark
        parts = sorted(closed.parts.values(), key=lambda p: p.record.offset)
        state.tracker.done([p.record.offset for p in parts], seq)
        wait = now - min(p.record.consumed_at for p in parts)
        if len(parts) >= self.settings.min_receivers:
            record = record_of(closed)
            self.emissions[(record.partition, record.offset)] = Emission(
                seq, watermark, outcome, len(parts), wait
            )
            out.append(record)
            return
        needed = self.settings.min_receivers
        message = f"set {closed.key} closed with {len(parts)} receivers, fewer than {needed}"
        for index, part in enumerate(parts):
            letter = rejected(part.record, "too_few", message)
            first = index == 0
            self.emissions[(part.record.partition, part.record.offset)] = Emission(
                seq,
                watermark,
                ("evicted" if outcome == "evicted" else "expired") if first else None,
                len(parts) if first else 0,
                wait if first else None,
                letter,
            )
            out.append(part.record)

    def _dead_letter(self, state: _Partition, letter: DeadLetter, out: list[InputRecord]) -> None:
        seq = next(self._seq)
        record = letter.record
        state.tracker.done([record.offset], seq)
        self.emissions[(record.partition, record.offset)] = Emission(seq, state.step_watermark, letter=letter)
        out.append(record)
