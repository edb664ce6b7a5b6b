"""SIGKILL the consumer at random moments while captures stream through: exactly one result each."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter

import pytest

from tests.integration.conftest import ConsumerProcess, read_topic, results_of, send_captures

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

CAPTURES = 1500
KILLS = 5


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
    rng = random.Random(7)
    kills = 0
    try:
        while kills < KILLS:
            time.sleep(rng.uniform(1.0, 4.0))
            consumer.kill()
            kills += 1
            consumer.start()
        sender.join(120)
        messages = read_topic(
            settings.kafka.bootstrap_servers,
            settings.kafka.output_topic,
            expected=CAPTURES,
            timeout=240,
            idle=5,
        )
    finally:
        if consumer.alive():
            assert consumer.terminate() == 0
    counts = Counter(r.capture_id for r in results_of(messages))
    missing = set(truth) - set(counts)
    duplicated = {cid: n for cid, n in counts.items() if n > 1}
    print(f"kills={kills} results={sum(counts.values())} missing={len(missing)} duplicated={len(duplicated)}")
    assert len(truth) == CAPTURES
    assert not missing, f"{len(missing)} captures lost"
    assert not duplicated, f"{len(duplicated)} captures with more than one committed result"


def test_sigterm_mid_stream_exits_zero_quickly_and_loses_nothing(make_settings, tmp_path):
    settings = make_settings(instance_id="graceful-1")
    consumer = ConsumerProcess(settings, tmp_path / "consumer.log").start()
    truth: dict = {}
    sender = threading.Thread(
        target=lambda: truth.update(send_captures(settings, 300, pool=20, rate=100, seed=31))
    )
    sender.start()
    time.sleep(3.0)
    started = time.monotonic()
    code = consumer.terminate(timeout=60)
    stopped_in = time.monotonic() - started
    print(f"SIGTERM to exit: {stopped_in:.2f} s")
    assert code == 0
    assert stopped_in < 35, "shutdown must finish within the transaction timeout"
    sender.join(60)
    consumer.start()
    try:
        messages = read_topic(
            settings.kafka.bootstrap_servers, settings.kafka.output_topic, expected=300, timeout=120
        )
    finally:
        assert consumer.terminate() == 0
    counts = Counter(r.capture_id for r in results_of(messages))
    assert set(counts) == set(truth) and max(counts.values()) == 1
