"""Brokers of a three-node cluster die mid-stream: the consumer loses and duplicates nothing.

Each test streams captures (20/s) through a consumer that reaches the cluster only through the
fault proxy, kills or restarts nodes, and counts the committed results read_committed.  The
figures, time to recover included, are printed and kept in ``test-artifacts/cluster-faults.json``.
"""

from __future__ import annotations

import os
import time

import pytest

from tests.reliability.fault_run import FaultRun

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

WARM_UP = 20  # results before a fault: the consumer is really processing when it strikes
AFTER = 20  # results of captures sent after a fault: processing has resumed
TIMEOUT = float(os.environ.get("HEIMDALL_FAULT_TIMEOUT_S", "300"))  # bounds a hang only


def test_topics_take_replication_from_settings(cluster_settings, healthy_cluster):
    settings = cluster_settings()  # ensure_topics ran with replication_factor=3, min_insync_replicas=2
    admin = healthy_cluster.admin()
    metadata = admin.list_topics(settings.kafka.input_topic, timeout=10).topics[settings.kafka.input_topic]
    assert {len(p.replicas) for p in metadata.partitions.values()} == {3}
    from confluent_kafka.admin import ConfigResource

    resource = ConfigResource("topic", settings.kafka.output_topic)
    configs = admin.describe_configs([resource])[resource].result(timeout=30)
    assert configs["min.insync.replicas"].value == "2"


def _running(cluster_settings, start_consumer, healthy_cluster):
    settings = cluster_settings()
    run = FaultRun(healthy_cluster.direct, settings.kafka.input_topic, settings.kafka.output_topic)
    consumer = start_consumer(settings)
    run.wait_progress(0.0, WARM_UP, TIMEOUT, "no results before the fault")
    return settings, run, consumer


def test_input_partition_leader_killed(cluster_settings, start_consumer, healthy_cluster):
    settings, run, consumer = _running(cluster_settings, start_consumer, healthy_cluster)
    leader = healthy_cluster.leader(settings.kafka.input_topic, 0)
    killed_at = time.monotonic()
    healthy_cluster.stop(leader, kill=True)
    run.wait_progress(killed_at, AFTER, TIMEOUT, "no new results after the leader was killed", consumer)
    moved_to = healthy_cluster.leader(settings.kafka.input_topic, 0)
    healthy_cluster.start(leader)
    outcome = run.finish("input partition leader SIGKILL", killed_at, detail=f"(node {leader} -> {moved_to})")
    assert consumer.thread.is_alive(), "the consumer stopped when a leader died"
    consumer.stop()
    assert (outcome.lost, outcome.duplicated) == (0, 0), outcome


def test_transaction_coordinator_killed(cluster_settings, start_consumer, healthy_cluster):
    settings, run, consumer = _running(cluster_settings, start_consumer, healthy_cluster)
    transactional_id = f"{settings.kafka.transactional_id_prefix}-{settings.instance_id}"
    coordinator = healthy_cluster.transaction_coordinator(transactional_id)
    aborted = consumer.metric("heimdall_transactions_total", outcome="aborted")
    killed_at = time.monotonic()
    healthy_cluster.stop(coordinator, kill=True)
    # Normal recovery takes ~12 s: a tenth of the usual bound is plenty and keeps a stall short.
    bound = min(TIMEOUT, 120)
    run.wait_progress(killed_at, AFTER, bound, "no new results after the coordinator was killed", consumer)
    moved_to = healthy_cluster.transaction_coordinator(transactional_id)
    healthy_cluster.start(coordinator)
    aborts = consumer.metric("heimdall_transactions_total", outcome="aborted") - aborted
    outcome = run.finish(
        "transaction coordinator SIGKILL",
        killed_at,
        detail=f"(node {coordinator} -> {moved_to}, {aborts:.0f} transactions aborted)",
    )
    assert moved_to != coordinator
    assert consumer.thread.is_alive(), "the consumer stopped when its coordinator died"
    consumer.stop()
    assert (outcome.lost, outcome.duplicated) == (0, 0), outcome


def test_rolling_restart_of_all_three(cluster_settings, start_consumer, healthy_cluster):
    _settings, run, consumer = _running(cluster_settings, start_consumer, healthy_cluster)
    stops = []
    for node in healthy_cluster.node_ids():
        stops.append(time.monotonic())
        healthy_cluster.stop(node)  # SIGTERM: an orderly shutdown hands leadership over first
        healthy_cluster.start(node)
        # The next node may go only once this one has caught up, as in any rolling restart.
        healthy_cluster.wait_in_sync()
        run.wait_progress(stops[-1], AFTER, TIMEOUT, f"no new results after node {node} restarted", consumer)
    outcome = run.finish("rolling restart of 3 nodes", stops, detail="(SIGTERM, nodes 1, 2, 3)")
    assert consumer.thread.is_alive(), "the consumer stopped during the rolling restart"
    consumer.stop()
    assert (outcome.lost, outcome.duplicated) == (0, 0), outcome
