"""Settings: environment parsing, and secrets that never show outside the client configuration."""

from __future__ import annotations

import os

import pytest
from pydantic import ValidationError

from heimdall_stream.config import Settings

SECRETS = {
    "HEIMDALL_KAFKA__SASL_PASSWORD": "kafka-s3cret",
    "HEIMDALL_REDIS__PASSWORD": "redis-s3cret",
    "HEIMDALL_MODEL__CONTROL_HMAC_KEY": "hmac-s3cret",
}


def test_nested_environment_variables_and_secret_masking(monkeypatch):
    for key, value in {
        **SECRETS,
        "HEIMDALL_KAFKA__BOOTSTRAP_SERVERS": "b:9093",
        "HEIMDALL_BATCHING__MAX_BATCH_SIZE": "8",
        "HEIMDALL_KAFKA__CLIENT_OPTIONS": '{"socket.keepalive.enable": "true"}',
    }.items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    assert settings.kafka.bootstrap_servers == "b:9093" and settings.batching.max_batch_size == 8
    for text in (repr(settings), str(settings), settings.model_dump_json()):
        for secret in SECRETS.values():
            assert secret not in text
    config = settings.kafka.client_config()
    assert config["sasl.password"] == "kafka-s3cret" and config["socket.keepalive.enable"] == "true"


def test_settings_are_frozen_and_validated(monkeypatch):
    monkeypatch.setenv("HEIMDALL_BATCHING__MAX_BATCH_SIZE", "0")
    with pytest.raises(ValidationError):
        Settings()
    monkeypatch.delenv("HEIMDALL_BATCHING__MAX_BATCH_SIZE")
    settings = Settings()
    with pytest.raises(ValidationError):
        settings.log_level = "DEBUG"  # type: ignore[misc]


def test_a_redis_ca_bundle_needs_a_tls_url(monkeypatch):
    monkeypatch.setenv("HEIMDALL_REDIS__SSL_CA_CERTS", "/etc/ca.pem")
    with pytest.raises(ValidationError, match="rediss://"):
        Settings()
    monkeypatch.setenv("HEIMDALL_REDIS__URL", "rediss://cache:6380/0")
    assert Settings().redis.ssl_ca_certs == "/etc/ca.pem"


def test_prefetch_bound_reaches_the_consumer_configuration(monkeypatch):
    from heimdall_stream.clients import consumer_config

    assert consumer_config(Settings())["queued.max.messages.kbytes"] == 16_384
    monkeypatch.setenv("HEIMDALL_KAFKA__PREFETCH_KBYTES", "2048")
    assert consumer_config(Settings())["queued.max.messages.kbytes"] == 2048
    monkeypatch.setenv("HEIMDALL_KAFKA__PREFETCH_KBYTES", "10")
    with pytest.raises(ValidationError):
        Settings()


def test_load_settings_names_each_bad_variable_on_one_line(monkeypatch):
    from heimdall_stream.config import load_settings
    from heimdall_stream.errors import ConfigurationError

    monkeypatch.setenv("HEIMDALL_BATCHING__MAX_BATCH_SIZE", "0")
    monkeypatch.setenv("HEIMDALL_KAFKA__DELIVERY", "twice")
    with pytest.raises(ConfigurationError) as raised:
        load_settings()
    message = str(raised.value)
    assert "\n" not in message and message.startswith("invalid settings: ")
    assert "HEIMDALL_BATCHING__MAX_BATCH_SIZE: " in message and "HEIMDALL_KAFKA__DELIVERY: " in message
    monkeypatch.delenv("HEIMDALL_BATCHING__MAX_BATCH_SIZE")
    monkeypatch.delenv("HEIMDALL_KAFKA__DELIVERY")
    monkeypatch.setenv("HEIMDALL_KAFKA__CLIENT_OPTIONS", "{not json")
    with pytest.raises(ConfigurationError, match=r"invalid settings: .*kafka"):
        load_settings()


def test_every_producer_is_idempotent_with_acks_all(monkeypatch):
    from heimdall_stream.clients import (
        capture_producer_config,
        idempotent_producer_config,
        producer_config,
    )

    monkeypatch.setenv("HEIMDALL_KAFKA__SASL_USERNAME", "svc")
    settings = Settings()
    plain = idempotent_producer_config(settings)
    assert plain["enable.idempotence"] is True and plain["acks"] == "all"
    assert plain["sasl.username"] == "svc" and "linger.ms" not in plain
    tuned = idempotent_producer_config(settings, linger_ms=7, max_message_bytes=2_000_000)
    assert tuned["linger.ms"] == 7 and tuned["message.max.bytes"] == 2_000_000
    capture = capture_producer_config(settings)
    assert capture["message.max.bytes"] > settings.limits.max_message_bytes
    results = producer_config(settings)
    assert results["enable.idempotence"] is True and results["acks"] == "all"
    assert results["transactional.id"].endswith(settings.instance_id)


def test_transactional_producer_retries_a_refused_transaction_soon():
    from heimdall_stream.clients import TRANSACTION_RETRY_BACKOFF_MS, producer_config

    # CONCURRENT_TRANSACTIONS after a commit is retried after this, not librdkafka's 100 ms.
    assert producer_config(Settings())["retry.backoff.ms"] == TRANSACTION_RETRY_BACKOFF_MS <= 20
    passthrough = Settings(kafka={"client_options": {"retry.backoff.ms": "50"}})
    assert producer_config(passthrough)["retry.backoff.ms"] == "50"
    assert "retry.backoff.ms" not in producer_config(Settings(kafka={"delivery": "at_least_once"}))


def test_batching_knobs_and_the_worker_default():
    # max_in_flight was never read: the bound is the pipeline (2 x workers batches) plus the prefetch.
    batching = Settings().batching
    assert set(batching.model_dump()) == {
        "max_batch_size",
        "max_wait_ms",
        "workers",
        "inline_max_captures",
        "overlap_commit",
    }
    assert batching.overlap_commit is False
    assert batching.inline_max_captures == 4
    assert batching.workers == len(os.sched_getaffinity(0))
    assert Settings(batching={"workers": 3}).batching.workers == 3


@pytest.mark.parametrize("delivery", ["exactly_once", "at_least_once"])
def test_the_stream_consumer_never_commits_or_stores_offsets_on_its_own(delivery):
    from heimdall_stream.clients import consumer_config

    config = consumer_config(Settings(kafka={"delivery": delivery}))
    assert config["enable.auto.commit"] is False
    assert config["enable.auto.offset.store"] is False
