"""The Kafka broker dies (SIGKILL) or stops (SIGTERM) mid-stream: the consumer rides it out."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest

from tests.integration.conftest import read_topic, results_of, send_captures

pytestmark = [pytest.mark.reliability, pytest.mark.slow]


@pytest.mark.parametrize("kill", [True, False], ids=["sigkill", "orderly"])
def test_broker_restart_mid_stream_loses_and_duplicates_nothing(
    services, make_settings, start_consumer, kill
):
    if services.provider.get("kafka") != "local":
        pytest.skip("needs the local stack to restart Kafka")
    settings = make_settings()
    consumer = start_consumer(settings)
    truth = send_captures(settings, 150, pool=20, seed=51)
    read_topic(settings.kafka.bootstrap_servers, settings.kafka.output_topic, expected=150, idle=1)
    down_at = time.monotonic()
    services.stop("kafka", kill=kill)
    time.sleep(3)
    services.start("kafka")
    more: dict = {}
    sender = threading.Thread(
        target=lambda: more.update(send_captures(settings, 150, pool=20, rate=50, seed=52))
    )
    sender.start()
    sender.join(120)
    messages = read_topic(
        settings.kafka.bootstrap_servers, settings.kafka.output_topic, expected=300, timeout=180
    )
    first_new = min((m.timestamp()[1] / 1000 for m in messages if m.key().decode() in more), default=None)
    assert consumer.thread.is_alive(), "the consumer exited when the broker went away"
    consumer.stop()
    counts = Counter(r.capture_id for r in results_of(messages))
    assert set(counts) == set(truth) | set(more), f"{len(set(truth) | set(more) - set(counts))} lost"
    assert max(counts.values()) == 1, "duplicated results after the broker restart"
    if first_new is not None:
        delay = first_new - time.time() + time.monotonic() - down_at
        print(f"broker {'killed' if kill else 'stopped'}: first new result {delay:.1f} s after it went down")
