"""Redis stopped mid-stream and restarted: no capture lost, degraded state visible, recovery."""

from __future__ import annotations

import threading
import time

import pytest

from tests.integration.conftest import read_topic, results_of, send_captures

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_redis_outage_loses_nothing_and_recovers(services, make_settings, start_consumer):
    if services.provider.get("redis") != "local":
        pytest.skip("needs the local stack to stop and start Redis")
    settings = make_settings()
    consumer = start_consumer(settings)
    truth = {}
    sender = threading.Thread(target=lambda: truth.update(send_captures(settings, 90, rate=15, seed=11)))
    sender.start()
    time.sleep(1.5)
    services.stop("redis")
    try:
        deadline = time.monotonic() + 20
        while consumer.metric("heimdall_redis_up") != 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert consumer.metric("heimdall_redis_up") == 0
        ok, detail = consumer.service.health.ready()
        time.sleep(2.5)
        ok, detail = consumer.service.health.ready()
        assert ok, "a Redis outage must not make the consumer unready"
        assert detail["redis_healthy"] is False
    finally:
        services.start("redis")
    sender.join(60)
    results = results_of(
        read_topic(settings.kafka.bootstrap_servers, settings.kafka.output_topic, expected=len(truth))
    )
    deadline = time.monotonic() + 20
    while consumer.metric("heimdall_redis_up") != 1 and time.monotonic() < deadline:
        time.sleep(0.2)
    consumer.stop()
    assert {r.capture_id for r in results} == set(truth), "captures were lost during the Redis outage"
    assert len(results) == len(truth)
    assert consumer.metric("heimdall_redis_up") == 1, "Redis came back but the consumer did not notice"
    assert consumer.metric("heimdall_redis_errors_total") >= 1
