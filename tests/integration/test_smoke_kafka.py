"""The broker is a real Kafka: partitions, consumer groups and transactions work."""

from __future__ import annotations

import uuid

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

pytestmark = pytest.mark.integration


def _consume_all(bootstrap: str, topic: str, group: str, expected: int, **extra: str) -> list[bytes]:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            **extra,
        }
    )
    consumer.subscribe([topic])
    values: list[bytes] = []
    idle = 0
    try:
        while len(values) < expected or idle < 3:
            msg = consumer.poll(1.0)
            if msg is None:
                idle += 1
                if idle > 20:
                    break
                continue
            assert msg.error() is None, msg.error()
            values.append(msg.value())
            idle = 0 if len(values) < expected else idle
        if values:
            consumer.commit(asynchronous=False)
    finally:
        consumer.close()
    return values


def test_three_partitions_and_a_consumer_group(kafka_bootstrap, kafka_admin, new_topic, new_group_id):
    topic = new_topic(partitions=3)
    assert len(kafka_admin.list_topics(topic, timeout=10).topics[topic].partitions) == 3
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "enable.idempotence": True})
    sent = {f"m{i}".encode() for i in range(30)}
    for i, value in enumerate(sorted(sent)):
        producer.produce(topic, key=str(i).encode(), value=value, partition=i % 3)
    assert producer.flush(30) == 0

    group = new_group_id()
    assert set(_consume_all(kafka_bootstrap, topic, group, len(sent))) == sent

    # The group committed: a new member of the same group sees nothing left.
    consumer = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": group})
    committed = consumer.committed([TopicPartition(topic, p) for p in range(3)], timeout=10)
    consumer.close()
    assert sum(tp.offset for tp in committed) == 30


def test_aborted_transaction_is_invisible_to_read_committed(kafka_bootstrap, new_topic, new_group_id):
    topic = new_topic(partitions=1)
    producer = Producer(
        {"bootstrap.servers": kafka_bootstrap, "transactional.id": f"smoke-{uuid.uuid4().hex}"}
    )
    producer.init_transactions(30)

    producer.begin_transaction()
    producer.produce(topic, value=b"aborted")
    producer.flush(30)
    producer.abort_transaction(30)

    producer.begin_transaction()
    producer.produce(topic, value=b"committed")
    producer.commit_transaction(30)

    committed = _consume_all(
        kafka_bootstrap, topic, new_group_id(), 1, **{"isolation.level": "read_committed"}
    )
    assert committed == [b"committed"]
    uncommitted = _consume_all(
        kafka_bootstrap, topic, new_group_id(), 2, **{"isolation.level": "read_uncommitted"}
    )
    assert uncommitted == [b"aborted", b"committed"]
