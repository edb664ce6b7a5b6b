"""The adapter: a closed set of parts → the whole-capture input the batch path already takes.

The set becomes one ``IqCapture`` (capture_id = the transmission key, captured_at and centre
frequency from the anchor, receivers sorted by id so arrival order never shows) in an
``InputRecord`` that stands for the set: its partition and lowest part offset (the lineage of
the result), its earliest consumption time (so queue and processing latencies include the wait
in the join).  The record carries the capture decoded and no bytes of its own: the parts were
decoded once on arrival, and their sample bytes are shared, not copied, so a set is never
encoded to be decoded again.  It also carries the parts' own records, so that a set refused
after assembly is dead-lettered as its parts (original bytes, their own offsets).  A set has
no message size to bound: each part was size-checked, the join's bounds cap what it holds, and
validation caps the receivers and samples of a capture.
"""

from __future__ import annotations

from heimdall_stream.join.parts import Part
from heimdall_stream.join.window import OpenSet
from heimdall_stream.processing.records import InputRecord
from heimdall_stream.wire.messages import IqCapture, ReceiverIq


def capture_of(closed: OpenSet) -> IqCapture:
    """The whole capture a set stands for."""
    anchor = closed.anchor.capture
    receivers = tuple(_receiver(part, closed) for _, part in sorted(closed.parts.items()))
    return IqCapture(closed.key, anchor.window_start, anchor.center_frequency_hz, receivers)


def record_of(closed: OpenSet) -> InputRecord:
    """The input record of a set, as if it had arrived whole (but already decoded)."""
    records = sorted((p.record for p in closed.parts.values()), key=lambda r: r.offset)
    first = closed.anchor.record
    delays = [r.broker_delay_s for r in records if r.broker_delay_s is not None]
    return InputRecord(
        topic=first.topic,
        partition=first.partition,
        offset=records[0].offset,
        key=closed.key.encode(),
        value=None,
        consumed_at=min(r.consumed_at for r in records),
        broker_delay_s=max(delays) if delays else None,
        capture=capture_of(closed),
        parts=tuple(records),
    )


def _receiver(part: Part, closed: OpenSet) -> ReceiverIq:
    capture = part.capture
    offset_ns = capture.timestamp_offset_ns
    if offset_ns is not None:
        # Relative to the set's window start, which is the anchor's, not this receiver's.
        shift = capture.window_start - closed.anchor.capture.window_start
        offset_ns += (shift.days * 86_400 + shift.seconds) * 1_000_000_000 + shift.microseconds * 1_000
    return ReceiverIq(
        receiver_id=capture.receiver_id,
        latitude=capture.latitude,
        longitude=capture.longitude,
        sample_rate_hz=capture.sample_rate_hz,
        sample_format=capture.sample_format,
        samples=capture.samples,
        altitude_m=capture.altitude_m,
        timestamp_offset_ns=offset_ns,
    )
