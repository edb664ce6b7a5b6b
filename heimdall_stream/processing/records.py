"""The values a batch is made of: input records, decoded captures, results, dead letters.

Errors are values: every stage splits its input into what goes on and ``DeadLetter`` records
that name the reason; nothing here does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from heimdall_stream.errors import HeimdallError
from heimdall_stream.wire.messages import IqCapture, Localization


@dataclass(frozen=True, slots=True)
class InputRecord:
    """One consumed message, as the pipeline sees it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    consumed_at: float  # monotonic seconds
    broker_delay_s: float | None = None  # from the message's timestamp to its consumption
    # A capture assembled in the process (a joined set) arrives decoded, with no bytes of its
    # own: ``parts`` are the consumed records it was made of (their original bytes, for the DLQ).
    capture: IqCapture | None = None
    parts: tuple[InputRecord, ...] = ()


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A record that cannot be processed, and why."""

    record: InputRecord
    error_class: str
    reason: str
    message: str

    @classmethod
    def of(cls, record: InputRecord, error: HeimdallError) -> DeadLetter:
        """Dead letter for a heimdall error."""
        return cls(record, type(error).__name__, error.reason, str(error))


@dataclass(frozen=True, slots=True)
class Decoded:
    """A decoded, validated capture and the record it came from."""

    record: InputRecord
    capture: IqCapture


@dataclass(frozen=True, slots=True)
class Result:
    """A finished localization and its encoded value."""

    record: InputRecord
    localization: Localization
    value: bytes
    cache_key: str
    prediction: bytes  # what goes into the result cache
    captured_at: datetime


@dataclass(frozen=True, slots=True)
class VersionStats:
    """What one primary version did in a batch (for the metrics recorded after the commit)."""

    version: str
    fresh: int
    cache_hits: int
    inference_s: float
    results: tuple[Result, ...]


@dataclass(slots=True)
class ShadowComparison:
    """How one shadow version compared with the primary on a batch (recorded after the commit).

    Kept as values rather than observed at once, so that a batch that is aborted and scored
    again counts its comparisons once, like every other figure of the batch.
    """

    version: str
    errors: int = 0
    inference_s: float | None = None
    distances_m: list[float] = field(default_factory=list)
    overlaps: list[float] = field(default_factory=list)


@dataclass
class ScoredBatch:
    """Everything one batch produced: what delivery writes, and what is recorded after the commit."""

    records: list[InputRecord]
    batch_id: str
    results: list[Result] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    versions: list[VersionStats] = field(default_factory=list)
    shadows: list[ShadowComparison] = field(default_factory=list)
    # Capture ids this batch claimed in the dedup check; released after its commit or discard.
    claimed: list[str] = field(default_factory=list)
    # Seconds spent per stage of the batch path (decode, features, inference, finish, commit …).
    stages: dict[str, float] = field(default_factory=dict)
    started_at: float = 0.0  # monotonic: when a worker began it
    finished_at: float = 0.0  # monotonic: when its scoring was done
