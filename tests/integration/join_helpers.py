"""Per-receiver parts on real Kafka for the join's tests: settings, sending, and the reference run."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition

from heimdall_stream.config import Settings
from heimdall_stream.join.joiner import Joiner
from heimdall_stream.processing.records import InputRecord

SENTINEL_MS = 3_600_000  # an hour after everything else: moves every partition's watermark past it


def join_settings(
    make_settings: Callable[..., Settings],
    new_topic: Callable[..., str],
    partitions: int = 3,
    **overrides: Any,
) -> Settings:
    """Settings with the join on, on a fresh receivers topic; ``join=`` adds join settings."""
    topic = new_topic("receivers", partitions=partitions)
    join = {"enabled": True, "topic": topic, **overrides.pop("join", {})}
    return make_settings(join=join, **overrides)


def producer(settings: Settings) -> Producer:
    """An idempotent producer, as a receiver would use (order kept per partition)."""
    return Producer(
        {
            "bootstrap.servers": settings.kafka.bootstrap_servers,
            "enable.idempotence": True,
            "message.max.bytes": 16 * 1024 * 1024,
            "linger.ms": 5,
        }
    )


def send(settings: Settings, parts: Iterable[tuple[str, bytes]], partition: int | None = None) -> None:
    """Send (key, value) parts in this order and wait until they are all delivered."""
    out = producer(settings)
    for key, value in parts:
        if partition is None:
            out.produce(settings.join.topic, key=key.encode(), value=value)
        else:
            out.produce(settings.join.topic, key=key.encode(), value=value, partition=partition)
        out.poll(0)
    assert out.flush(60) == 0


def read_parts(settings: Settings, timeout: float = 60) -> dict[int, list[Any]]:
    """Every message of the receivers topic, per partition in offset order."""
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka.bootstrap_servers,
            "group.id": f"parts-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    metadata = consumer.list_topics(settings.join.topic, timeout=30).topics[settings.join.topic]
    ends = {
        p: consumer.get_watermark_offsets(TopicPartition(settings.join.topic, p), timeout=30)[1]
        for p in metadata.partitions
    }
    consumer.subscribe([settings.join.topic])
    by_partition: dict[int, list[Any]] = {p: [] for p in ends}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(len(by_partition[p]) < ends[p] for p in ends):
        message = consumer.poll(0.25)
        if message is not None and message.error() is None:
            by_partition[message.partition()].append(message)
    consumer.close()
    return {p: sorted(m, key=lambda x: x.offset()) for p, m in by_partition.items()}


def reference_sets(settings: Settings, by_partition: dict[int, list[Any]]) -> dict[str, tuple[str, ...]]:
    """The sets a run without any crash forms from these parts: key → receivers (sorted)."""
    joiner = Joiner(settings.join, settings.limits.max_message_bytes)
    emitted: list[InputRecord] = []
    for partition, messages in by_partition.items():
        joiner.assign(partition, None, 0.0)
        for m in messages:
            record = InputRecord(m.topic(), partition, m.offset(), m.key(), m.value(), 0.0)
            emitted += joiner.accept(record, 0.0)
    emitted += joiner.flush(0.0)
    sets: dict[str, tuple[str, ...]] = {}
    for record in emitted:
        if joiner.letter(record) is None:
            capture = record.capture
            assert capture.capture_id not in sets
            sets[capture.capture_id] = tuple(r.receiver_id for r in capture.receivers)
    return sets
