"""SIGKILL the consumer at random moments while captures stream through: exactly one result each."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter

import pytest

from tests.integration.conftest import (
    ConsumerProcess,
    committed_offsets,
    read_topic,
    results_of,
    send_captures,
    wait_for,
)
from tests.reliability.kills import kill_at_progress

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

CAPTURES = 1500
KILLS = 5


def _committed(settings) -> int:
    return sum(committed_offsets(settings).values())


def test_sigkill_at_random_moments_loses_and_duplicates_nothing(make_settings, tmp_path):
    settings = make_settings(
        instance_id="crashy-1",  # stable: a restart fences the killed instance's open transaction
        kafka={"static_membership": True, "session_timeout_ms": 15_000},
        batching={"max_batch_size": 32},
    )
    consumer = ConsumerProcess(settings, tmp_path / "consumer.log").start()
    truth: dict = {}
    sender = threading.Thread(
        target=lambda: truth.update(send_captures(settings, CAPTURES, pool=40, rate=150, seed=21))
    )
    sender.start()
    # Random moments of the consumer's progress, not of the clock: each kill lands while the
    # consumer is working through the stream (after its restart's first commit, before the
    # last capture), however long start-ups take on this machine.
    rng = random.Random(7)
    moments = sorted(rng.sample(range(CAPTURES // 20, CAPTURES * 9 // 10), KILLS))
    kills = 0
    try:
        kills = kill_at_progress(consumer, lambda: _committed(settings), moments, rng, 180)
        sender.join(180)
        assert not sender.is_alive(), "the captures were not all sent"
        messages = read_topic(
            settings.kafka.bootstrap_servers,
            settings.kafka.output_topic,
            expected=CAPTURES,
            timeout=300,
            idle=5,
        )
    finally:
        if consumer.alive():
            assert consumer.terminate() == 0
    counts = Counter(r.capture_id for r in results_of(messages))
    missing = set(truth) - set(counts)
    duplicated = {cid: n for cid, n in counts.items() if n > 1}
    print(
        f"kills={kills} (after {moments} committed) results={sum(counts.values())} "
        f"missing={len(missing)} duplicated={len(duplicated)}"
    )
    assert len(truth) == CAPTURES
    assert not missing, f"{len(missing)} captures lost"
    assert not duplicated, f"{len(duplicated)} captures with more than one committed result"


def test_sigterm_mid_stream_exits_zero_quickly_and_loses_nothing(make_settings, start_stream, tmp_path):
    settings = make_settings(instance_id="graceful-1")
    consumer = ConsumerProcess(settings, tmp_path / "consumer.log").start()
    stream = start_stream(settings, rate=100, pool=20, seed=31)
    # SIGTERM once the consumer is busy with the stream (not while it is still starting up).
    wait_for(lambda: _committed(settings) >= 100, 180, "the consumer is not processing the stream")
    started = time.monotonic()
    code = consumer.terminate(timeout=60)
    stopped_in = time.monotonic() - started
    print(f"SIGTERM to exit: {stopped_in:.2f} s")
    assert code == 0
    assert stopped_in < 35, "shutdown must finish within the transaction timeout"
    truth = stream.stop()
    consumer.start()
    try:
        messages = read_topic(
            settings.kafka.bootstrap_servers, settings.kafka.output_topic, expected=len(truth), timeout=180
        )
    finally:
        assert consumer.terminate() == 0
    counts = Counter(r.capture_id for r in results_of(messages))
    assert set(counts) == set(truth) and max(counts.values()) == 1
