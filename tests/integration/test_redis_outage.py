"""Redis stopped mid-stream and restarted: no capture lost, degraded state visible, recovery."""

from __future__ import annotations

import pytest

from tests.integration.conftest import read_topic, results_of, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_redis_outage_loses_nothing_and_recovers(services, make_settings, start_consumer, start_stream):
    if services.provider.get("redis") != "local":
        pytest.skip("needs the local stack to stop and start Redis")
    settings = make_settings()
    consumer = start_consumer(settings)

    def produced() -> float:
        return consumer.metric_sum("heimdall_results_produced_total")

    # Captures keep coming until the consumer has served some before, during and after the
    # outage, however long stopping and starting Redis takes on this machine.
    stream = start_stream(settings, rate=15, seed=11)
    wait_for(lambda: produced() >= 20, 120, "the stream is not being served")
    services.stop("redis")
    try:
        wait_for(lambda: consumer.metric("heimdall_redis_up") == 0, 60, "the consumer missed the outage")
        down = produced()
        wait_for(lambda: produced() >= down + 30, 120, "no capture was served while Redis was down")
        ok, detail = consumer.service.health.ready()
        assert ok, "a Redis outage must not make the consumer unready"
        assert detail["redis_healthy"] is False
        assert consumer.metric("heimdall_redis_up") == 0
    finally:
        services.start("redis")
    wait_for(lambda: consumer.metric("heimdall_redis_up") == 1, 60, "the consumer did not see Redis back")
    back = produced()
    wait_for(lambda: produced() >= back + 20, 120, "no capture was served after Redis came back")
    truth = stream.stop()
    results = results_of(
        read_topic(
            settings.kafka.bootstrap_servers, settings.kafka.output_topic, expected=len(truth), timeout=120
        )
    )
    consumer.stop()
    assert {r.capture_id for r in results} == set(truth), "captures were lost during the Redis outage"
    assert len(results) == len(truth)
    assert consumer.metric("heimdall_redis_up") == 1, "Redis came back but the consumer did not notice"
    assert consumer.metric("heimdall_redis_errors_total") >= 1
