"""Building ReceiverCapture part records for the join's unit tests (no Kafka)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from heimdall_stream.processing.records import InputRecord
from heimdall_stream.service_settings import JoinSettings
from heimdall_stream.wire.codec import receiver_codec
from heimdall_stream.wire.messages import ReceiverCapture, SampleFormat

EPOCH = datetime(2026, 1, 1, tzinfo=UTC)
TOPIC = "heimdall.iq.receivers"


def part_value(
    key: str,
    receiver: str,
    event_ms: int,
    *,
    frequency: float = 145.5e6,
    expected: int | None = None,
    samples: bytes = b"\x01\x00\x02\x00" * 4,
) -> bytes:
    """An encoded part of transmission ``key`` from ``receiver``."""
    return receiver_codec().encode(
        ReceiverCapture(
            transmission_key=key,
            receiver_id=receiver,
            latitude=52.0,
            longitude=4.0,
            window_start=EPOCH + timedelta(milliseconds=event_ms),
            center_frequency_hz=frequency,
            sample_rate_hz=48_000.0,
            sample_format=SampleFormat.CI16,
            samples=samples,
            timestamp_offset_ns=0,
            expected_receivers=expected,
        )
    )


def part_record(offset: int, key: str, receiver: str, event_ms: int, partition: int = 0, **kw) -> InputRecord:
    """The consumed record of a part at ``offset``."""
    return InputRecord(
        topic=TOPIC,
        partition=partition,
        offset=offset,
        key=key.encode(),
        value=part_value(key, receiver, event_ms, **kw),
        consumed_at=float(offset),
    )


def join_settings(**overrides) -> JoinSettings:
    """Join settings for tests: a 2 s window, sets of 2 receivers or more."""
    values = {"enabled": True, "window_ms": 2_000, "min_receivers": 2, **overrides}
    return JoinSettings(**values)
