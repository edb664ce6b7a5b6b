"""SIGKILL the consumer while receivers publish their parts: every set once, with the same receivers."""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from heimdall_stream.lab.arrivals import Arrivals
from heimdall_stream.lab.publisher import SimulationPlan, publish
from heimdall_stream.network import load_network
from heimdall_stream.wire.codec import receiver_codec
from heimdall_stream.wire.messages import ReceiverCapture, SampleFormat
from tests.integration.conftest import ConsumerProcess, _admin, read_topic, results_of
from tests.integration.join_helpers import SENTINEL_MS, join_settings, producer, read_parts, reference_sets
from tests.reliability.kills import kill_at_progress

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

TRANSMISSIONS = 2000
RATE = 100.0  # transmissions per second
KILLS = 5
PARTITIONS = 3


def _committed_parts(settings) -> int:
    """Parts of the receivers topic the group has committed past (the sign of progress)."""
    from confluent_kafka import ConsumerGroupTopicPartitions

    group = settings.kafka.group_id
    answer = (
        _admin(settings.kafka.bootstrap_servers)
        .list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)])[group]
        .result(timeout=30)
    )
    return sum(max(tp.offset, 0) for tp in answer.topic_partitions if tp.topic == settings.join.topic)


def _sentinels(settings) -> None:
    """One part an hour after everything in each partition: every real set's window closes by event time."""
    out = producer(settings)
    at = datetime.now(UTC) + timedelta(milliseconds=SENTINEL_MS)
    for partition in range(PARTITIONS):
        key = f"sentinel-{partition}"
        part = ReceiverCapture(key, "sentinel", 0.0, 0.0, at, 145e6, 48e3, SampleFormat.CI16, b"\0" * 4)
        out.produce(
            settings.join.topic, key=key.encode(), value=receiver_codec().encode(part), partition=partition
        )
    assert out.flush(60) == 0


def test_sigkill_during_per_receiver_publishing_loses_and_duplicates_no_set(
    make_settings, new_topic, tmp_path
):
    settings = join_settings(
        make_settings,
        new_topic,
        partitions=PARTITIONS,
        instance_id="join-crashy-1",  # stable: a restart fences the killed instance's transaction
        kafka={"static_membership": True, "session_timeout_ms": 15_000},
        batching={"max_batch_size": 32},
        join={"window_ms": 2_000, "idle_ms": 60_000},  # sets close on event time only
    )
    consumer = ConsumerProcess(settings, tmp_path / "consumer.log").start()
    arrivals = Arrivals(window_ms=2_000, late_fraction=0.03, missing_fraction=0.05)
    plan = SimulationPlan(
        TRANSMISSIONS, RATE, seed=17, pool=40, id_prefix=f"j{uuid.uuid4().hex[:6]}", per_receiver=arrivals
    )
    sent = {}
    sender = threading.Thread(
        target=lambda: sent.update(
            stats=publish(producer(settings), settings.join.topic, load_network(), plan)
        )
    )
    started = time.monotonic()
    sender.start()
    parts = int(TRANSMISSIONS * 6)  # about 6 parts a transmission reach the topic
    rng = random.Random(11)
    moments = sorted(rng.sample(range(parts // 20, parts * 8 // 10), KILLS))
    kills = 0
    try:
        kills = kill_at_progress(consumer, lambda: _committed_parts(settings), moments, rng, 300)
        sender.join(300)
        assert not sender.is_alive(), "the parts were not all sent"
        _sentinels(settings)
        expected = reference_sets(settings, read_parts(settings))
        messages = read_topic(
            settings.kafka.bootstrap_servers,
            settings.kafka.output_topic,
            expected=len(expected),
            timeout=300,
            idle=5,
        )
    finally:
        if consumer.alive():
            assert consumer.terminate() == 0
    results = results_of(messages)
    counts = Counter(r.capture_id for r in results)
    missing = set(expected) - set(counts)
    duplicated = {k: n for k, n in counts.items() if n > 1}
    different = {r.capture_id for r in results if tuple(r.receivers_used) != expected.get(r.capture_id)}
    print(
        f"kills={kills} sets={len(expected)} results={len(results)} missing={len(missing)} "
        f"duplicated={len(duplicated)} different={len(different)} stats={sent.get('stats')} "
        f"in {time.monotonic() - started:.0f} s"
    )
    assert kills == KILLS
    assert len(expected) > TRANSMISSIONS * 0.8
    assert not missing, f"{len(missing)} sets lost"
    assert not duplicated, f"{len(duplicated)} sets with more than one result"
    assert not different, f"{len(different)} sets with other receivers than without kills"
