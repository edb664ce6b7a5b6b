"""Poison batches: work whose transaction aborts for a reason that repeats stops the instance.

A dead letter larger than the DLQ topic's ``max.message.bytes`` is refused by the broker every
time, and an output topic deleted while the consumer runs never comes back by itself: the batch
is retried with a growing wait, ``HEIMDALL_KAFKA__ABORT_RETRIES`` times, then the instance stops
with ``PoisonBatchError`` (exit 3 from the CLI) naming the batch and the reason.  Nothing past
the batch is committed: the group's offset stays at its first record, and the results before it
are there exactly once.
"""

from __future__ import annotations

import time
from collections import Counter

import pytest
from confluent_kafka import KafkaException, Producer

from heimdall_stream.stream.aborts import PoisonBatchError
from tests.integration.conftest import committed_offsets, read_topic, results_of, send_captures, wait_for

pytestmark = [pytest.mark.reliability, pytest.mark.slow]
BEFORE = 4  # captures committed before the poison
AFTER = 2  # captures behind it, never committed


def _fast_budget(**kafka: object) -> dict[str, object]:
    # Two retries with short waits: enough to show the growing wait, quick to give up.
    return {"abort_retries": 2, "abort_backoff_first_s": 0.2, "abort_backoff_max_s": 1.0, **kafka}


def _committed(settings) -> int | None:
    """The group's committed offset on the input's one partition (None while it cannot say)."""
    try:
        return committed_offsets(settings).get(0)
    except KafkaException:  # e.g. the group coordinator still loading on a fresh broker
        return None


def _stopped(consumer, timeout: float) -> BaseException:
    wait_for(lambda: not consumer.thread.is_alive(), timeout, "the consumer did not stop on the poison batch")
    assert consumer.error is not None
    return consumer.error


def _check_nothing_committed_past(settings, truth_before: dict) -> None:
    assert committed_offsets(settings) == {0: BEFORE}, "an offset past the poison batch was committed"
    results = results_of(
        read_topic(settings.kafka.bootstrap_servers, settings.kafka.output_topic, expected=BEFORE, idle=2.0)
    )
    counts = Counter(r.capture_id for r in results)
    assert set(counts) == set(truth_before) and max(counts.values()) == 1


def test_a_dead_letter_the_broker_refuses_stops_the_instance_after_the_bounded_retries(
    make_settings, new_topic, start_consumer
):
    settings = make_settings(
        kafka=_fast_budget(
            input_topic=new_topic("captures", partitions=1),
            dlq_topic=new_topic("dlq-small", partitions=1, config={"max.message.bytes": "20000"}),
        )
    )
    consumer = start_consumer(settings)
    truth = send_captures(settings, BEFORE)
    wait_for(lambda: _committed(settings) == BEFORE, 120, "the first captures were not committed")

    # Undecodable, so dead-lettered with its 50 kB value: larger than the DLQ topic accepts.
    producer = Producer({"bootstrap.servers": settings.kafka.bootstrap_servers})
    producer.produce(settings.kafka.input_topic, key=b"poison", value=b"\x00" * 50_000)
    assert producer.flush(30) == 0
    send_captures(settings, AFTER)
    started = time.monotonic()
    error = _stopped(consumer, 180)
    took = time.monotonic() - started
    print(f"poison batch: stopped {took:.1f} s after it was sent")

    print(f"stopped with: {error}")
    assert isinstance(error, PoisonBatchError), repr(error)
    message = str(error)
    assert f"gave up on the batch at {settings.kafka.input_topic}[0]@{BEFORE} after 3 aborted" in message
    assert "Message size too large" in message, message
    assert consumer.metric("heimdall_transactions_total", outcome="gave_up") == 1
    assert consumer.metric("heimdall_transactions_total", outcome="aborted") == 3
    assert consumer.metric("heimdall_consecutive_aborts") == 3
    _check_nothing_committed_past(settings, truth)


def test_an_output_topic_deleted_at_runtime_stops_the_instance(
    make_settings, new_topic, start_consumer, kafka_admin
):
    settings = make_settings(
        # A short transaction timeout: a record for a missing topic fails after 5 s, not 30 s.
        kafka=_fast_budget(input_topic=new_topic("captures", partitions=1), transaction_timeout_ms=5_000)
    )
    consumer = start_consumer(settings)
    truth = send_captures(settings, BEFORE)
    wait_for(lambda: _committed(settings) == BEFORE, 120, "the first captures were not committed")
    _check_nothing_committed_past(settings, truth)  # read before the topic goes

    for future in kafka_admin.delete_topics([settings.kafka.output_topic]).values():
        future.result(timeout=30)
    send_captures(settings, AFTER)
    started = time.monotonic()
    error = _stopped(consumer, 300)
    print(f"deleted output topic: stopped {time.monotonic() - started:.1f} s after the next captures")

    assert isinstance(error, PoisonBatchError), repr(error)
    message = str(error)
    assert f"gave up on the batch at {settings.kafka.input_topic}[0]@{BEFORE} after 3 aborted" in message
    assert f"timed out on {settings.kafka.output_topic}" in message, message
    assert consumer.metric("heimdall_transactions_total", outcome="gave_up") == 1
    assert _committed(settings) == BEFORE, "an offset past the failed batch was committed"
