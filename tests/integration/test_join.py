"""The per-receiver join on real Kafka: parts shuffled, repeated, late and missing; each set once."""

from __future__ import annotations

import dataclasses
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from confluent_kafka import Consumer, TopicPartition

from heimdall_stream.join.checkpoint import Checkpoint
from heimdall_stream.lab.per_receiver import part_value
from heimdall_stream.lab.simulator import IqSimulator
from heimdall_stream.network import load_network
from tests.integration.conftest import read_topic, results_of, wait_for
from tests.integration.join_helpers import join_settings, send

pytestmark = pytest.mark.integration

TRANSMISSIONS = 8


def _plan():
    """Transmissions 1 s apart; the parts of each in an order that exercises every rule.

    Returns the (key, value) parts in sending order, the receivers expected in each set, and
    the dead letters expected by reason.
    """
    simulator = IqSimulator(load_network(), seed=5)
    start = datetime.now(UTC).replace(microsecond=0)
    order: list[tuple[str, bytes]] = []
    expected: dict[str, tuple[str, ...]] = {}
    letters: Counter[str] = Counter()
    held: list[tuple[int, tuple[str, bytes]]] = []  # (sent after this transmission's parts, part)
    for i in range(TRANSMISSIONS):
        capture = simulator.generate(i).capture
        key = f"join-{i}"
        capture = dataclasses.replace(capture, capture_id=key, captured_at=start + timedelta(seconds=i))
        receivers = sorted(capture.receivers, key=lambda r: r.receiver_id, reverse=True)  # shuffled
        parts = [(key, part_value(capture, r, key, expected=None)) for r in receivers]
        on_time = [r.receiver_id for r in receivers]
        if i == 3:  # too few arrive: the set is dead-lettered part by part
            parts = parts[:2]
            letters["too_few"] += 2
        else:
            if i % 2 == 0:  # a repeat of a receiver already in the set
                order.append(parts[0])
                letters["duplicate"] += 1
            if i == 1:  # sent after transmission 3, 2 s later: its window has closed by then
                held.append((i + 2, parts.pop()))
                on_time.pop()
                letters["late"] += 1
            if i in (2, 4):  # sent after the next transmission, 1 s later: still on time
                held.append((i + 1, parts.pop()))
            expected[key] = tuple(sorted(on_time))
        order.extend(parts)
        order.extend(part for due, part in held if due == i)
    return order, expected, letters


def test_parts_shuffled_repeated_late_and_missing_form_each_set_once(
    make_settings, new_topic, start_consumer
):
    settings = join_settings(
        make_settings, new_topic, partitions=1, join={"window_ms": 2_000, "idle_ms": 1_500}
    )
    order, expected, letters = _plan()
    consumer = start_consumer(settings)
    send(settings, order)
    bootstrap = settings.kafka.bootstrap_servers
    results = results_of(
        read_topic(bootstrap, settings.kafka.output_topic, expected=len(expected), timeout=180)
    )
    got = Counter(r.capture_id for r in results)
    assert set(got) == set(expected) and max(got.values()) == 1, got
    for result in results:
        assert tuple(sorted(result.receivers_used)) == expected[result.capture_id], result.capture_id
        assert result.lineage.source_partition == 0
    dead = read_topic(bootstrap, settings.kafka.dlq_topic, expected=sum(letters.values()), timeout=60)
    reasons = Counter(dict(m.headers())["heimdall.error.reason"].decode() for m in dead)
    assert reasons == letters
    wait_for(
        lambda: consumer.metric("heimdall_join_sets_total", outcome="expired") == 1, 60, "expired set counted"
    )
    assert consumer.metric("heimdall_join_sets_total", outcome="partial") == len(expected)
    assert consumer.metric("heimdall_join_parts_rejected_total", reason="late") == letters["late"]
    assert consumer.metric("heimdall_join_open_sets") == 0
    # Everything is done: the committed offset is past the last part, with no join state left.
    wait_for(lambda: _committed(settings).offset == len(order), 60, "the last part committed")
    consumer.stop()


def _committed(settings) -> Checkpoint:
    reader = Consumer(
        {"bootstrap.servers": settings.kafka.bootstrap_servers, "group.id": settings.kafka.group_id}
    )
    try:
        (tp,) = reader.committed([TopicPartition(settings.join.topic, 0)], timeout=30)
    finally:
        reader.close()
    return Checkpoint.parse(tp.offset, tp.metadata)


@pytest.mark.parametrize("delivery", ["exactly_once", "at_least_once"])
def test_waiting_parts_are_committed_as_offset_metadata_and_resumed(
    make_settings, new_topic, start_consumer, delivery
):
    # At least once too: the checkpoint changes while its offset stays at meta-0's part.
    settings = join_settings(
        make_settings,
        new_topic,
        partitions=1,
        join={"window_ms": 2_000, "idle_ms": 600_000},
        kafka={"delivery": delivery},
    )
    simulator = IqSimulator(load_network(), seed=9)
    start = datetime.now(UTC)
    first, second = (
        dataclasses.replace(
            simulator.generate(i).capture,
            capture_id=f"meta-{i}",
            captured_at=start + timedelta(milliseconds=100 * i),
        )
        for i in range(2)
    )
    n = len(second.receivers)
    # meta-0 waits for its window (no expected count); meta-1 is complete and emitted at once.
    order = [("meta-0", part_value(first, first.receivers[0], "meta-0", expected=None))]
    order += [("meta-1", part_value(second, r, "meta-1", expected=n)) for r in second.receivers]
    consumer = start_consumer(settings)
    send(settings, order)
    bootstrap = settings.kafka.bootstrap_servers
    (result,) = results_of(read_topic(bootstrap, settings.kafka.output_topic, expected=1, timeout=120))
    assert result.capture_id == "meta-1"
    wait_for(lambda: _committed(settings).done, 60, "the join state committed")
    checkpoint = _committed(settings)
    assert checkpoint.offset == 0 and checkpoint.done == tuple(range(1, n + 1))
    consumer.stop()
    # A restart skips meta-1's parts (done) and joins meta-0 again with the rest of its receivers.
    again = start_consumer(settings)
    send(settings, [("meta-0", part_value(first, r, "meta-0", expected=None)) for r in first.receivers[1:]])
    late_window = dataclasses.replace(first, capture_id="meta-9", captured_at=start + timedelta(seconds=10))
    send(settings, [("meta-9", part_value(late_window, first.receivers[0], "meta-9", expected=None))])
    results = results_of(read_topic(bootstrap, settings.kafka.output_topic, expected=2, timeout=120))
    assert Counter(r.capture_id for r in results) == {"meta-0": 1, "meta-1": 1}
    again.stop()
