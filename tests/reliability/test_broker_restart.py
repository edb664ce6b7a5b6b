"""The Kafka broker dies (SIGKILL) or stops (SIGTERM) mid-stream: the consumer rides it out."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest
from confluent_kafka import Consumer, TopicPartition

from heimdall_stream.config import Settings
from heimdall_stream.wire.codec import capture_codec
from tests.integration.conftest import read_topic, results_of, send_captures, wait_for

pytestmark = [pytest.mark.reliability, pytest.mark.slow]


@pytest.mark.parametrize("kill", [True, False], ids=["sigkill", "orderly"])
def test_broker_restart_mid_stream_loses_and_duplicates_nothing(
    services, make_settings, start_consumer, kill
):
    if services.provider.get("kafka") != "local":
        pytest.skip("needs the local stack to restart Kafka")
    settings = make_settings()
    consumer = start_consumer(settings)
    truth = send_captures(settings, 150, pool=20, seed=51)
    bootstrap = settings.kafka.bootstrap_servers
    assert len(read_topic(bootstrap, settings.kafka.output_topic, expected=150, idle=1, timeout=120)) == 150
    outages = consumer.metric("heimdall_kafka_errors_total", code="_ALL_BROKERS_DOWN")
    down_at = time.monotonic()
    services.stop("kafka", kill=kill)
    try:  # the broker stays down until the consumer has noticed, however slow the machine
        wait_for(
            lambda: consumer.metric("heimdall_kafka_errors_total", code="_ALL_BROKERS_DOWN") > outages,
            120,
            "the consumer did not notice the broker going down",
        )
    finally:
        services.start("kafka")
    more: dict = {}
    sender = threading.Thread(
        target=lambda: more.update(send_captures(settings, 150, pool=20, rate=50, seed=52))
    )
    sender.start()
    sender.join(180)
    assert not sender.is_alive(), "the captures were not all sent after the restart"
    messages = read_topic(
        settings.kafka.bootstrap_servers, settings.kafka.output_topic, expected=300, timeout=180
    )
    first_new = min((m.timestamp()[1] / 1000 for m in messages if m.key().decode() in more), default=None)
    assert consumer.thread.is_alive(), "the consumer exited when the broker went away"
    consumer.stop()
    counts = Counter(r.capture_id for r in results_of(messages))
    missing = (set(truth) | set(more)) - set(counts)
    assert not missing, loss_report(settings, missing, set(more))
    assert set(counts) == set(truth) | set(more), (
        f"results of captures never sent: {set(counts) - set(truth) - set(more)}"
    )
    assert max(counts.values()) == 1, "duplicated results after the broker restart"
    if first_new is not None:
        delay = first_new - time.time() + time.monotonic() - down_at
        print(f"broker {'killed' if kill else 'stopped'}: first new result {delay:.1f} s after it went down")


def loss_report(settings: Settings, missing: set[str], after: set[str]) -> str:
    """Where the captures without a result are: for a failure that shows rarely, say everything.

    Sent before or after the restart, in the input topic or not (and where), whether their
    results turned up late on a second read, and the group's committed offsets.
    """
    kafka = settings.kafka
    inputs = read_topic(kafka.bootstrap_servers, kafka.input_topic, expected=300, idle=1, timeout=60)
    where = {}
    for message in inputs:
        capture_id = capture_codec().decode(message.value()).capture_id
        if capture_id in missing:
            where[capture_id] = (message.partition(), message.offset())
    late = {
        r.capture_id
        for r in results_of(
            read_topic(kafka.bootstrap_servers, kafka.output_topic, expected=300, idle=1, timeout=60)
        )
    }
    group = Consumer({"bootstrap.servers": kafka.bootstrap_servers, "group.id": kafka.group_id})
    try:
        partitions = sorted({partition for partition, _ in where.values()})
        committed = group.committed([TopicPartition(kafka.input_topic, p) for p in partitions], timeout=30)
    finally:
        group.close()
    return (
        f"{len(missing)} captures without a result ({len(missing & after)} sent after the restart); "
        f"in the input topic at (partition, offset): {sorted(where.values())}, not there: "
        f"{len(missing - set(where))}; results on a second read: {len(missing & late)}; "
        f"committed offsets of those partitions: {[(tp.partition, tp.offset) for tp in committed]}"
    )
