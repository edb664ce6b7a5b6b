"""Three consumer processes share six partitions; one is SIGKILLed and later comes back."""

from __future__ import annotations

import time
from collections import Counter
from datetime import UTC, datetime

import pytest
from confluent_kafka.admin import AdminClient

from tests.integration.conftest import ConsumerProcess, committed_offsets, read_topic, results_of, wait_for

pytestmark = [pytest.mark.reliability, pytest.mark.slow]
CLIENT_PREFIX = "heimdall-stream-"


def _assignment(bootstrap: str, group: str) -> dict[str, set[int]]:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    description = admin.describe_consumer_groups([group])[group].result(timeout=10)
    return {
        m.client_id.removeprefix(CLIENT_PREFIX): {tp.partition for tp in m.assignment.topic_partitions}
        for m in description.members
    }


def _wait_members(bootstrap: str, group: str, count: int, timeout: float = 180) -> dict[str, set[int]]:
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


def test_three_instances_balance_survive_member_loss_and_rejoin(
    make_settings, new_topic, start_stream, tmp_path
):
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

    def progressed(partitions, since: dict[int, int]) -> bool:
        committed = committed_offsets(settings)
        return all(committed.get(p, 0) > since.get(p, 0) for p in partitions)

    try:
        balanced = _wait_members(bootstrap, group, 3)
        assert sorted(len(p) for p in balanced.values()) == [2, 2, 2]
        # Captures keep coming until the victim is back and serving: the kill, the take-over
        # and the rejoin all fall inside the stream, however slow the machine.
        stream = start_stream(settings, rate=60, pool=30, seed=61)
        wait_for(lambda: progressed(range(6), {}), 180, "not every member is serving the stream")
        victim = consumers[1]
        orphaned = balanced["scale-1"]
        killed_at = datetime.now(UTC)
        victim.kill()
        at_kill = committed_offsets(settings)
        _wait_members(bootstrap, group, 2)
        # The victim stays down until the survivors have taken over its partitions and committed.
        wait_for(lambda: progressed(orphaned, at_kill), 180, "the survivors did not take over the partitions")
        victim.start()
        _wait_members(bootstrap, group, 3)
        rejoined = committed_offsets(settings)
        wait_for(lambda: progressed(range(6), rejoined), 180, "the group stopped serving after the rejoin")
        truth = stream.stop()
        messages = read_topic(bootstrap, settings.kafka.output_topic, expected=len(truth), timeout=180)
    finally:
        for consumer in consumers:
            if consumer.alive():
                assert consumer.terminate() == 0
    results = results_of(messages)
    counts = Counter(r.capture_id for r in results)
    missing, duplicated = set(truth) - set(counts), [c for c, n in counts.items() if n > 1]
    print(f"sent={len(truth)} results={len(results)} missing={len(missing)} duplicated={len(duplicated)}")
    assert not missing and not duplicated
    reassigned = [
        (r.produced_at - killed_at).total_seconds()
        for r in results
        if r.lineage.source_partition in orphaned and r.produced_at > killed_at
    ]
    assert reassigned, "no result from the killed member's partitions after the kill"
    print(f"kill → first result from a reassigned partition: {min(reassigned):.1f} s")
