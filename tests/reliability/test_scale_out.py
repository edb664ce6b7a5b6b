"""Three consumer processes share six partitions; one is SIGKILLed and later comes back."""

from __future__ import annotations

import threading
import time
from collections import Counter
from datetime import UTC, datetime

import pytest
from confluent_kafka.admin import AdminClient

from tests.integration.conftest import ConsumerProcess, read_topic, results_of, send_captures

pytestmark = [pytest.mark.reliability, pytest.mark.slow]
CLIENT_PREFIX = "heimdall-stream-"


def _assignment(bootstrap: str, group: str) -> dict[str, set[int]]:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    description = admin.describe_consumer_groups([group])[group].result(timeout=10)
    return {
        m.client_id.removeprefix(CLIENT_PREFIX): {tp.partition for tp in m.assignment.topic_partitions}
        for m in description.members
    }


def _wait_members(bootstrap: str, group: str, count: int, timeout: float = 90) -> dict[str, set[int]]:
    """Wait until ``count`` members share the six partitions evenly (cooperative rebalancing
    moves partitions over a few rounds)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assignment = _assignment(bootstrap, group)
        sizes = sorted(len(p) for p in assignment.values())
        if len(assignment) == count and sum(sizes) == 6 and sizes[-1] - sizes[0] <= 1:
            return assignment
        time.sleep(0.5)
    raise TimeoutError(f"group did not settle on {count} members: {_assignment(bootstrap, group)}")


def test_three_instances_balance_survive_member_loss_and_rejoin(make_settings, new_topic, tmp_path):
    base = make_settings()
    settings = base.model_copy(
        update={"kafka": base.kafka.model_copy(update={"input_topic": new_topic("captures6", partitions=6)})}
    )
    bootstrap, group = settings.kafka.bootstrap_servers, settings.kafka.group_id
    consumers = [
        ConsumerProcess(
            settings.model_copy(update={"instance_id": f"scale-{i}"}), tmp_path / f"c{i}.log"
        ).start()
        for i in range(3)
    ]
    try:
        balanced = _wait_members(bootstrap, group, 3)
        assert sorted(len(p) for p in balanced.values()) == [2, 2, 2]
        truth: dict = {}
        sender = threading.Thread(
            target=lambda: truth.update(send_captures(settings, 900, pool=30, rate=60, seed=61))
        )
        sender.start()
        time.sleep(4)
        victim = consumers[1]
        orphaned = balanced["scale-1"]
        killed_at = datetime.now(UTC)
        victim.kill()
        _wait_members(bootstrap, group, 2)
        time.sleep(3)
        victim.start()
        _wait_members(bootstrap, group, 3)
        sender.join(120)
        messages = read_topic(bootstrap, settings.kafka.output_topic, expected=900, timeout=180)
    finally:
        for consumer in consumers:
            if consumer.alive():
                assert consumer.terminate() == 0
    results = results_of(messages)
    counts = Counter(r.capture_id for r in results)
    missing, duplicated = set(truth) - set(counts), [c for c, n in counts.items() if n > 1]
    print(f"results={len(results)} missing={len(missing)} duplicated={len(duplicated)}")
    assert not missing and not duplicated
    reassigned = [
        (r.produced_at - killed_at).total_seconds()
        for r in results
        if r.lineage.source_partition in orphaned and r.produced_at > killed_at
    ]
    assert reassigned, "no result from the killed member's partitions after the kill"
    print(f"kill → first result from a reassigned partition: {min(reassigned):.1f} s")
