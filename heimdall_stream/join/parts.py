"""One consumed message of the receivers topic → a ``Part`` (decoded, with its event time), or a dead letter.

The size bound is checked before parsing, and the Kafka key must be the part's
``transmission_key``: a part keyed otherwise may sit in another partition than the rest of its
set, where no join could ever see them together.
"""

from __future__ import annotations

from dataclasses import dataclass

from heimdall_stream.errors import DecodeError
from heimdall_stream.processing.records import DeadLetter, InputRecord
from heimdall_stream.wire.codec import receiver_codec
from heimdall_stream.wire.messages import ReceiverCapture

ERROR_CLASS = "JoinError"


@dataclass(frozen=True, slots=True)
class Part:
    """A decoded receiver part and the record it came from."""

    record: InputRecord
    capture: ReceiverCapture
    event_ms: int  # window_start in ms since the epoch: the part's event time

    @property
    def key(self) -> str:
        """The transmission key its set is joined on."""
        return self.capture.transmission_key

    @property
    def size(self) -> int:
        """Bytes of samples held while the part waits in its set."""
        return len(self.capture.samples)


def rejected(record: InputRecord, reason: str, message: str) -> DeadLetter:
    """The dead letter of a part the join refuses, with its reason."""
    return DeadLetter(record, ERROR_CLASS, reason, message)


def decode_part(record: InputRecord, max_bytes: int) -> Part | DeadLetter:
    """Bytes → part; oversized, undecodable or mis-keyed parts become dead letters."""
    value = record.value
    if value is None:
        return DeadLetter(record, "DecodeError", "empty", "message has no value (tombstone?)")
    if len(value) > max_bytes:
        return DeadLetter(
            record, "InvalidCaptureError", "oversized", f"part of {len(value)} bytes exceeds {max_bytes}"
        )
    try:
        capture = receiver_codec().decode(value)
    except DecodeError as exc:
        return DeadLetter.of(record, exc)
    key = capture.transmission_key
    if not key or (record.key is not None and record.key != key.encode()):
        return rejected(record, "bad_key", f"Kafka key {record.key!r} is not the transmission key {key!r}")
    return Part(record, capture, int(capture.window_start.timestamp() * 1000))
