"""The window between a transaction's commit and its Redis dedup marks, closed.

Exactly-once covers what Kafka sees: a capture's result and its input offset commit together.
The dedup marks that stop an *upstream* duplicate (the same ``capture_id`` sent again, at a new
offset) used to be written only after that commit: an instance that died in between (one Redis
round trip) left committed results with no mark, and its in-process recent-id memory died with
it, so an upstream repeat of exactly those captures was processed again.  Now a *pending* mark
naming the input record is written before the commit (``processing.dedup``).

This test opens the window on purpose (the instance "dies" right after a commit, before
``after_commit`` marks anything), restarts, and sends every capture again: every repeat is
suppressed, and nothing is lost.
"""

from __future__ import annotations

from collections import Counter

import pytest

from heimdall_stream.processing.processor import BatchProcessor
from tests.integration.conftest import read_topic, results_of, send_captures, wait_for

pytestmark = [pytest.mark.reliability, pytest.mark.slow]
CAPTURES = 4


class DiedAfterCommit(BaseException):
    """Stands for SIGKILL between the commit and the marks (nothing may catch it)."""


def test_a_crash_between_commit_and_dedup_mark_lets_no_upstream_repeat_through(
    make_settings, new_topic, start_consumer, monkeypatch
):
    settings = make_settings(kafka={"input_topic": new_topic("captures", partitions=1)})
    plan = {"seed": 11, "id_prefix": f"window-{settings.kafka.input_topic[-8:]}"}
    kafka = settings.kafka

    def die(self, scored):
        raise DiedAfterCommit(f"died after committing {len(scored.results)} results")

    with monkeypatch.context() as patch:
        patch.setattr(BatchProcessor, "after_commit", die)
        first = start_consumer(settings)
        send_captures(settings, CAPTURES, **plan)
        wait_for(lambda: not first.thread.is_alive(), 120, "the first instance never committed")
    assert isinstance(first.error, DiedAfterCommit)
    in_window = {
        r.capture_id for r in results_of(read_topic(kafka.bootstrap_servers, kafka.output_topic, expected=1))
    }
    assert 1 <= len(in_window) <= CAPTURES

    # Restarted: finishes what the dead one left, marking it done, then sees every capture again.
    second = start_consumer(settings)
    wait_for(
        lambda: second.metric_sum("heimdall_results_produced_total") >= CAPTURES - len(in_window),
        120,
        "the restarted instance did not finish the rest",
    )
    send_captures(settings, CAPTURES, **plan)  # upstream repeats: same capture ids, new offsets
    wait_for(
        lambda: second.metric("heimdall_dedup_hits_total") >= CAPTURES,
        120,
        "the repeats were not deduplicated",
    )
    results = results_of(read_topic(kafka.bootstrap_servers, kafka.output_topic, expected=CAPTURES, idle=3.0))
    counts = Counter(r.capture_id for r in results)
    print(
        f"commit/mark window: {len(in_window)} of {CAPTURES} captures were committed by the instance "
        f"that died before marking them done; {sum(n - 1 for n in counts.values())} repeats got through"
    )
    assert len(counts) == CAPTURES, "a capture was lost"
    assert max(counts.values()) == 1, f"an upstream repeat got a second result: {counts}"
    second.stop()
