"""SIGKILL the consumer at random moments while captures stream through: exactly one result each
(at least one at least once)."""

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
    counts = _kill_at_random(settings, tmp_path, CAPTURES, KILLS, rate=150, seed=7)
    duplicated = {cid: n for cid, n in counts.items() if n > 1}
    assert not duplicated, f"{len(duplicated)} captures with more than one committed result"


def test_at_least_once_loses_nothing_to_sigkills(make_settings, tmp_path):
    # Offsets are stored once the outputs are acknowledged and committed by the loop about a
    # second later: a kill repeats input (held back by the dedup marks), never skips any.
    settings = make_settings(
        instance_id="crashy-alo-1",
        kafka={"delivery": "at_least_once", "static_membership": True, "session_timeout_ms": 15_000},
        batching={"max_batch_size": 32},
    )
    # Slower input than above, and no kill in its last 40 %: this consumer keeps up with 150/s
    # and commits a second's worth at a time, and a kill once everything is committed would
    # leave the next one no progress to wait for.
    _kill_at_random(settings, tmp_path, CAPTURES // 2, 3, rate=50, seed=11, until=0.6)


def _kill_at_random(
    settings, tmp_path, captures: int, kills: int, *, rate: int, seed: int, until: float = 0.9
) -> Counter:
    """Results per capture id of ``captures`` streamed through ``kills`` SIGKILLs; none may be lost."""
    consumer = ConsumerProcess(settings, tmp_path / "consumer.log").start()
    truth: dict = {}
    sender = threading.Thread(
        target=lambda: truth.update(send_captures(settings, captures, pool=40, rate=rate, seed=seed + 14))
    )
    sender.start()
    # Random moments of the consumer's progress, not of the clock: each kill lands while the
    # consumer is working through the stream (after its restart's first commit, before the
    # last capture), however long start-ups take on this machine.
    rng = random.Random(seed)
    moments = sorted(rng.sample(range(captures // 20, int(captures * until)), kills))
    done = 0
    try:
        done = kill_at_progress(consumer, lambda: _committed(settings), moments, rng, 180)
        sender.join(180)
        assert not sender.is_alive(), "the captures were not all sent"
        messages = read_topic(
            settings.kafka.bootstrap_servers,
            settings.kafka.output_topic,
            expected=captures,
            timeout=300,
            idle=5,
        )
    finally:
        if consumer.alive():
            assert consumer.terminate() == 0
    counts = Counter(r.capture_id for r in results_of(messages))
    missing = set(truth) - set(counts)
    print(
        f"{settings.kafka.delivery}: kills={done} (after {moments} committed) "
        f"results={sum(counts.values())} missing={len(missing)} "
        f"duplicated={sum(n > 1 for n in counts.values())}"
    )
    assert len(truth) == captures
    assert not missing, f"{len(missing)} captures lost"
    return counts


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
