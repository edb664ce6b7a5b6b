"""Reading a range of a topic: positions → offsets per partition, then read_committed, no commits.

A position is an offset (``12345``: the same offset in every partition, clamped to what the
partition holds), ``earliest``/``latest``, or an ISO 8601 time (``2026-11-30T12:00:00Z``: the
first message at or after it in each partition, by the messages' timestamps).  The end is
exclusive and fixed when the range is resolved: messages arriving later are not part of it.

The consumer has a group id (librdkafka wants one) but is *assigned* its partitions and never
commits, so it joins no group and moves no group's offsets; it reads ``read_committed``, so
aborted transactions are skipped as every reader of the topics does.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from confluent_kafka import Consumer, KafkaError, TopicPartition

from heimdall_stream.config import Settings
from heimdall_stream.errors import ConfigurationError
from heimdall_stream.processing.records import InputRecord


@dataclass(frozen=True)
class Range:
    """[start, end) offsets per partition of one topic."""

    topic: str
    bounds: dict[int, tuple[int, int]]

    @property
    def total(self) -> int:
        """Offsets in the range (an upper bound of the messages: markers take offsets too)."""
        return sum(max(end - start, 0) for start, end in self.bounds.values())

    def to_json(self) -> dict[str, list[int]]:
        """For the saved progress: partition → [start, end]."""
        return {str(p): [first, end] for p, (first, end) in sorted(self.bounds.items())}

    @classmethod
    def from_json(cls, topic: str, saved: dict[str, list[int]]) -> Range:
        """The range ``to_json`` saved."""
        return cls(topic, {int(p): (int(first), int(end)) for p, (first, end) in saved.items()})


def reader(settings: Settings) -> Consumer:
    """A read_committed consumer that never commits (assigned partitions, no group membership)."""
    return Consumer(
        {
            **settings.kafka.client_config(),
            "group.id": f"heimdall-replay-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
            "auto.offset.reset": "earliest",
        }
    )


def resolve(consumer: Consumer, topic: str, start: str, end: str, timeout: float = 30.0) -> Range:
    """The offsets of ``[start, end)`` in every partition of ``topic``."""
    metadata = consumer.list_topics(topic, timeout=timeout).topics.get(topic)
    if metadata is None or metadata.error is not None or not metadata.partitions:
        raise ConfigurationError(f"topic {topic} does not exist")
    bounds: dict[int, tuple[int, int]] = {}
    for partition in sorted(metadata.partitions):
        low, high = consumer.get_watermark_offsets(
            TopicPartition(topic, partition), timeout=timeout, cached=False
        )
        first = _offset(consumer, TopicPartition(topic, partition), start, (low, high), timeout)
        last = _offset(consumer, TopicPartition(topic, partition), end, (low, high), timeout)
        bounds[partition] = (first, max(first, last))
    return Range(topic, bounds)


def _offset(
    consumer: Consumer, where: TopicPartition, spec: str, bounds: tuple[int, int], timeout: float
) -> int:
    low, high = bounds
    text = spec.strip().lower()
    if text == "earliest":
        return low
    if text == "latest":
        return high
    if text.lstrip("-").isdigit():
        return min(max(int(text), low), high)
    try:
        moment = datetime.fromisoformat(spec.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ConfigurationError(
            f"position {spec!r} is neither an offset, earliest/latest nor an ISO 8601 time"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    found = consumer.offsets_for_times(
        [TopicPartition(where.topic, where.partition, int(moment.timestamp() * 1000))], timeout
    )
    offset = found[0].offset
    return high if offset < 0 else min(max(offset, low), high)  # -1: nothing at or after that time


def is_time(spec: str) -> bool:
    """Whether a position is a time (rather than an offset, earliest or latest)."""
    text = spec.strip().lower()
    return text not in ("earliest", "latest") and not text.lstrip("-").isdigit()


def read(
    consumer: Consumer, span: Range, start: dict[int, int], *, chunk: int = 256, idle_timeout: float = 60.0
) -> Iterator[list[InputRecord]]:
    """Chunks of the range's records, from ``start`` (per partition) to each partition's end.

    Raises ``ConfigurationError`` when no partition moves for ``idle_timeout`` seconds while
    some are not finished (an open transaction holding the last stable offset, for instance).
    """
    remaining = {p: end for p, (_, end) in span.bounds.items() if start.get(p, end) < end}
    if not remaining:
        return
    consumer.assign([TopicPartition(span.topic, p, start[p]) for p in remaining])
    progress_at = time.monotonic()
    while remaining:
        messages = consumer.consume(num_messages=chunk, timeout=1.0)
        records: list[InputRecord] = []
        now = time.monotonic()
        for message in messages:
            partition, offset = message.partition(), message.offset()
            error = message.error()
            if error is not None and error.code() != KafkaError._PARTITION_EOF:
                raise ConfigurationError(f"reading {span.topic}: {error.str()}")
            if partition is None or partition not in remaining:
                continue
            if error is not None or offset is None or offset >= remaining[partition]:
                remaining.pop(partition)  # at its end (EOF: everything committed so far is read)
                continue
            records.append(InputRecord(span.topic, partition, offset, message.key(), message.value(), now))
            if offset + 1 >= remaining[partition]:
                remaining.pop(partition)
        if messages:
            progress_at = now
        for position in consumer.position([TopicPartition(span.topic, p) for p in list(remaining)]):
            if position.offset >= remaining.get(position.partition, 0):  # past transaction markers
                remaining.pop(position.partition, None)
        if records:
            yield records
        elif remaining and now - progress_at > idle_timeout:
            raise ConfigurationError(
                f"reading {span.topic}: no progress for {idle_timeout:.0f} s "
                f"on partitions {sorted(remaining)}"
            )
