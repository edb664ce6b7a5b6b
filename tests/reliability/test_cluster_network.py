"""A bad network between the consumer and a three-node cluster, injected by toxiproxy.

A partition longer than the session timeout, 500 ms of added latency, and connections reset
every few seconds.  Each test counts the committed results read_committed (0 lost, 0
duplicated) and records the time to recover after the fault ends.

``HEIMDALL_LATENCY_FAULT_S`` (default 20) is how long the latency lasts at least; the issue's
scenario is a minute (60).  Twenty seconds already covers several session-timeout spans (6 s
here) and many transactions, which is what proves that latency neither expels the consumer
nor breaks a transaction.
"""

from __future__ import annotations

import os
import time

import pytest

from tests.integration.conftest import ConsumerThread, group_assignment, wait_for
from tests.reliability.fault_run import FaultRun

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

WARM_UP = 20
AFTER = 20
TIMEOUT = float(os.environ.get("HEIMDALL_FAULT_TIMEOUT_S", "300"))  # bounds a hang only
LATENCY_S = float(os.environ.get("HEIMDALL_LATENCY_FAULT_S", "20"))
RESET_EVERY_S = 3.0
RESET_ROUNDS = 6


def _held(settings, client_id: str) -> set[int]:
    return group_assignment(settings).get(client_id, set())


def test_partition_longer_than_session_timeout_then_heal(cluster_settings, start_consumer, healthy_cluster):
    # A reaches the cluster through the proxy; B, on the healthy side of the partition, does not.
    settings_a = cluster_settings(kafka={"transaction_timeout_ms": 120_000})
    settings_b = cluster_settings(direct=True)
    direct = cluster_settings(direct=True)  # admin look-ups bypass the proxy
    run = FaultRun(healthy_cluster.direct, settings_a.kafka.input_topic, settings_a.kafka.output_topic)
    a = start_consumer(settings_a)
    b = start_consumer(settings_b)
    a_id, b_id = f"heimdall-stream-{settings_a.instance_id}", f"heimdall-stream-{settings_b.instance_id}"
    wait_for(lambda: _held(direct, a_id) and _held(direct, b_id), TIMEOUT, "A and B never shared the input")
    run.wait_progress(0.0, WARM_UP, TIMEOUT, "no results before the partition")
    aborted = a.metric("heimdall_transactions_total", outcome="aborted")

    # A black hole: connections stay open, nothing passes either way (timeout toxic, 0 = forever).
    cut_at = time.monotonic()
    healthy_cluster.add_toxic("timeout", {"timeout": 0}, streams=("upstream", "downstream"))
    wait_for(lambda: _held(direct, b_id) == {0, 1, 2}, TIMEOUT, "B never took over A's partitions")
    run.wait_progress(cut_at, AFTER, TIMEOUT, "no results from B while A was cut off", b)
    # B holding everything shows A's session expired; the cut lasts longer than it in any case.
    session_s = settings_a.kafka.session_timeout_ms / 1000
    wait_for(lambda: time.monotonic() - cut_at > session_s, session_s + 60, "a cut longer than the session")
    expelled_after = time.monotonic() - cut_at

    healed_at = time.monotonic()
    healthy_cluster.heal()
    # A comes back by itself (no restart): it rejoins and gets partitions again.
    wait_for(lambda: bool(_held(direct, a_id)), TIMEOUT, "A did not rejoin the group after the partition")
    rejoined_s = time.monotonic() - healed_at
    results_a = a.metric_sum("heimdall_results_produced_total")
    wait_for(
        lambda: a.metric_sum("heimdall_results_produced_total") > results_a,
        TIMEOUT,
        "A produced nothing after it rejoined",
    )
    run.wait_progress(healed_at, AFTER, TIMEOUT, "no results after the partition healed", a)
    fenced = a.metric("heimdall_transactions_total", outcome="aborted") - aborted
    outcome = run.finish(
        "partition > session timeout, then heal",
        healed_at,
        detail=f"(cut {expelled_after:.0f} s; A rejoined {rejoined_s:.1f} s after the heal; "
        f"{fenced:.0f} late commits of A refused)",
    )
    assert a.thread.is_alive() and b.thread.is_alive(), "an instance stopped over the partition"
    a.stop()
    b.stop()
    assert (outcome.lost, outcome.duplicated) == (0, 0), outcome


def _one_consumer(
    cluster_settings, start_consumer, healthy_cluster, **kafka
) -> tuple[FaultRun, ConsumerThread]:
    settings = cluster_settings(kafka=kafka)
    run = FaultRun(healthy_cluster.direct, settings.kafka.input_topic, settings.kafka.output_topic)
    consumer = start_consumer(settings)
    run.wait_progress(0.0, WARM_UP, TIMEOUT, "no results before the fault")
    return run, consumer


def test_500ms_latency(cluster_settings, start_consumer, healthy_cluster):
    run, consumer = _one_consumer(cluster_settings, start_consumer, healthy_cluster)
    rebalances = consumer.metric_sum("heimdall_rebalances_total")
    added_at = time.monotonic()
    healthy_cluster.add_toxic("latency", {"latency": 500, "jitter": 0})
    run.wait_progress(added_at, AFTER, TIMEOUT, "no results under 500 ms latency", consumer)
    wait_for(lambda: time.monotonic() - added_at >= LATENCY_S, LATENCY_S + 60, "latency window")
    under = run.results_sent_after(added_at)
    removed_at = time.monotonic()
    healthy_cluster.heal()
    outcome = run.finish(
        "500 ms latency",
        removed_at,
        detail=f"({removed_at - added_at:.0f} s of latency, {under} results of captures sent meanwhile)",
    )
    assert consumer.metric_sum("heimdall_rebalances_total") == rebalances, "latency cost it its group"
    consumer.stop()
    assert (outcome.lost, outcome.duplicated) == (0, 0), outcome


def test_connection_resets_every_few_seconds(cluster_settings, start_consumer, healthy_cluster):
    run, consumer = _one_consumer(cluster_settings, start_consumer, healthy_cluster)
    started_at = time.monotonic()
    resets: list[float] = []
    # Every RESET_EVERY_S the consumer's connections to one broker, in turn, are reset (RST on
    # their next answer); until RESET_ROUNDS rounds are over and it made progress meanwhile.
    while len(resets) < RESET_ROUNDS or run.results_sent_after(started_at) < AFTER:
        assert time.monotonic() - started_at < TIMEOUT, run.progress(started_at, consumer)
        node = healthy_cluster.node_ids()[len(resets) % 3]
        resets.append(time.monotonic())
        healthy_cluster.toxiproxy.add_toxic(f"kafka-{node}", "reset_peer", {"timeout": 0}, name="reset")
        wait_for(lambda: time.monotonic() - resets[-1] >= 0.5, 30, "reset")  # long enough to hit a fetch
        healthy_cluster.toxiproxy.remove_toxic(f"kafka-{node}", "reset")
        wait_for(lambda: time.monotonic() - resets[-1] >= RESET_EVERY_S, 60, "the next reset")
    under, lasted = run.results_sent_after(started_at), time.monotonic() - started_at
    outcome = run.finish(
        f"connections reset every {RESET_EVERY_S:.0f} s",
        resets,
        detail=f"({len(resets)} resets over {lasted:.0f} s, {under} results meanwhile)",
    )
    assert consumer.thread.is_alive()
    consumer.stop()
    assert (outcome.lost, outcome.duplicated) == (0, 0), outcome
