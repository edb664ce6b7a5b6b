"""At least once: offsets of acknowledged batches, committed by the loop, a second apart.

No Kafka: a stand-in consumer records the commits, a fake clock decides when one is due.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition
from prometheus_client import CollectorRegistry

from heimdall_stream.metrics import Metrics
from heimdall_stream.stream.acked_offsets import AckedOffsets, offset_commit_reporter


class Consumer:
    """Records every commit; answers a synchronous one with ``answer`` (or raises it)."""

    def __init__(self, answer: list[TopicPartition] | Exception | None = None) -> None:
        self.answer = answer
        self.commits: list[tuple[list[tuple[str, int, int, str | None]], bool]] = []

    def commit(self, *, offsets: list[TopicPartition], asynchronous: bool) -> list[TopicPartition] | None:
        self.commits.append(
            ([(tp.topic, tp.partition, tp.offset, tp.metadata) for tp in offsets], asynchronous)
        )
        if isinstance(self.answer, Exception):
            raise self.answer
        return None if asynchronous else (self.answer if self.answer is not None else offsets)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _acked(consumer: Consumer, assigned: set[tuple[str, int]], registry: CollectorRegistry, clock: Clock):
    return AckedOffsets(consumer, Metrics(registry), lambda: assigned, interval_s=1.0, clock=clock)  # type: ignore[arg-type]


def _errors(registry: CollectorRegistry, code: str) -> float:
    return registry.get_sample_value("heimdall_kafka_errors_total", {"code": code}) or 0.0


def test_the_newest_offset_per_partition_is_sent_asynchronously_once_a_second_with_its_metadata():
    consumer, clock, registry = Consumer(), Clock(), CollectorRegistry()
    acked = _acked(consumer, {("in", 0), ("in", 1)}, registry, clock)
    acked.store([TopicPartition("in", 0, 5), TopicPartition("in", 1, 3)])
    acked.store([TopicPartition("in", 0, 9, metadata="join:1")])
    acked.commit_if_due()
    assert consumer.commits == []  # not a second since the last commit (or the start)
    clock.now += 1.0
    acked.commit_if_due()
    assert consumer.commits == [([("in", 0, 9, "join:1"), ("in", 1, 3, None)], True)]
    clock.now += 5.0
    acked.commit_if_due()  # nothing stored since: nothing sent
    assert len(consumer.commits) == 1


def test_only_partitions_still_assigned_are_committed_the_rest_is_dropped():
    consumer, clock, registry = Consumer(), Clock(), CollectorRegistry()
    assigned = {("in", 0)}
    acked = _acked(consumer, assigned, registry, clock)
    acked.store([TopicPartition("in", 0, 5), TopicPartition("in", 1, 3)])
    acked.commit_now()
    assert consumer.commits == [([("in", 0, 5, None)], False)]
    assigned.clear()
    acked.store([TopicPartition("in", 0, 8)])
    acked.commit_now()
    assert len(consumer.commits) == 1
    assigned.add(("in", 0))  # assigned again: what was dropped is not sent late
    acked.commit_now()
    assert len(consumer.commits) == 1


@pytest.mark.parametrize(
    "answer",
    [
        KafkaException(KafkaError(KafkaError.REBALANCE_IN_PROGRESS)),
        [
            SimpleNamespace(
                topic="in", partition=0, offset=5, error=KafkaError(KafkaError.REBALANCE_IN_PROGRESS)
            )
        ],
    ],
    ids=["raised", "per-partition"],
)
def test_a_synchronous_commit_that_fails_is_counted_never_raised(answer):
    consumer, clock, registry = Consumer(answer), Clock(), CollectorRegistry()  # type: ignore[arg-type]
    acked = _acked(consumer, {("in", 0)}, registry, clock)
    acked.store([TopicPartition("in", 0, 5)])
    acked.commit_now()
    assert _errors(registry, "REBALANCE_IN_PROGRESS") == 1


def test_an_asynchronous_commit_that_failed_is_counted_by_code_and_an_empty_one_is_not():
    registry = CollectorRegistry()
    report = offset_commit_reporter(Metrics(registry))
    report(None, [TopicPartition("in", 0, 5)])
    report(KafkaError(KafkaError._NO_OFFSET), [])
    assert _errors(registry, "_NO_OFFSET") == 0
    report(KafkaError(KafkaError.REBALANCE_IN_PROGRESS), [TopicPartition("in", 0, 5)])
    # librdkafka sets a partition's own error; confluent-kafka's TopicPartition keeps it read-only.
    failed = SimpleNamespace(
        topic="in", partition=1, offset=9, error=KafkaError(KafkaError.COORDINATOR_NOT_AVAILABLE)
    )
    report(None, [TopicPartition("in", 0, 5), failed])  # type: ignore[list-item]
    assert _errors(registry, "REBALANCE_IN_PROGRESS") == 1
    assert _errors(registry, "COORDINATOR_NOT_AVAILABLE") == 1
