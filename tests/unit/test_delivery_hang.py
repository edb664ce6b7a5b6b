"""A transactional call that never returns (librdkafka issues 5456/5511) aborts on a fresh producer."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from confluent_kafka import TopicPartition
from prometheus_client import CollectorRegistry

from heimdall_stream.config import Settings
from heimdall_stream.errors import FatalKafkaError
from heimdall_stream.metrics import Metrics
from heimdall_stream.processing.records import InputRecord, ScoredBatch
from heimdall_stream.stream import delivery as delivery_module
from heimdall_stream.stream.aborts import AbortBudget
from heimdall_stream.stream.bounded import CallHungError, bounded_call
from heimdall_stream.stream.delivery import Delivery, next_offsets


def test_a_bounded_call_returns_raises_or_gives_up():
    assert bounded_call(lambda: 42, 5.0, "answer") == 42
    with pytest.raises(KeyError):
        bounded_call(lambda: {}["missing"], 5.0, "lookup")
    release = threading.Event()
    try:
        with pytest.raises(CallHungError, match="stuck did not return within 0 s"):
            bounded_call(release.wait, 0.05, "stuck")
    finally:
        release.set()  # lets the abandoned helper end


class Producer:
    """A transactional producer whose send_offsets_to_transaction blocks until ``release``."""

    def __init__(self, release: threading.Event | None = None) -> None:
        self.release = release
        self.calls: list[str] = []

    def init_transactions(self, _timeout: float) -> None:
        self.calls.append("init")

    def begin_transaction(self) -> None:
        self.calls.append("begin")

    def send_offsets_to_transaction(self, _offsets: list[TopicPartition], _meta: Any, _t: float) -> None:
        self.calls.append("send_offsets")
        if self.release is not None:
            self.release.wait()  # as librdkafka does while it waits for a dead group coordinator

    def commit_transaction(self, _timeout: float) -> None:
        self.calls.append("commit")

    def flush(self, _timeout: float) -> int:
        self.calls.append("flush")
        return 0

    def abort_transaction(self, _timeout: float) -> None:
        self.calls.append("abort")


class FakeConsumer:
    def consumer_group_metadata(self) -> object:
        return object()


def test_a_hung_send_offsets_abandons_the_producer_and_the_next_transaction_uses_a_fresh_one(monkeypatch):
    monkeypatch.setattr(delivery_module, "KAFKA_TIMEOUT_S", 0.05)
    monkeypatch.setattr(delivery_module, "HUNG_GRACE_S", 0.05)
    fresh: list[Producer] = []
    monkeypatch.setattr(delivery_module, "Producer", lambda _config: fresh.append(Producer()) or fresh[-1])
    settings = Settings(kafka={"abort_retries": 3})
    metrics = Metrics(CollectorRegistry())
    delivery = Delivery.__new__(Delivery)  # no real clients: only the commit path runs
    delivery.settings, delivery.metrics, delivery.exactly_once = settings, metrics, True
    delivery.consumer, delivery._renew_producer, delivery._on_error = FakeConsumer(), False, print
    delivery._wedged = []
    delivery.offsets_of = next_offsets
    release = threading.Event()
    wedged = delivery.producer = Producer(release)
    waits: list[float] = []
    delivery.aborts = AbortBudget(settings.kafka, metrics, sleep=waits.append)
    batch = ScoredBatch([InputRecord("in", 0, o, b"k", b"v", consumed_at=0.0) for o in (5, 6)], "b-1")
    try:
        assert delivery.commit([batch], next_offsets(batch.records), delivery.group_metadata()) is False
        # Neither committed nor aborted through the wedged producer: the fresh one's init fences it.
        assert wedged.calls == ["begin", "send_offsets"]
        assert len(waits) == 1
        assert metrics.registry.get_sample_value("heimdall_transactions_total", {"outcome": "aborted"}) == 1

        assert delivery.commit([batch], next_offsets(batch.records), delivery.group_metadata()) is True
        assert [p.calls for p in fresh] == [["init", "begin", "send_offsets", "commit"]]
        assert delivery.producer is fresh[0]
        renewed = {"outcome": "producer_renewed"}
        assert metrics.registry.get_sample_value("heimdall_transactions_total", renewed) == 1
    finally:
        release.set()


def test_too_many_wedged_producers_at_once_stop_the_instance(monkeypatch):
    settings = Settings(kafka={"abort_retries": 8})
    metrics = Metrics(CollectorRegistry())
    delivery = Delivery.__new__(Delivery)
    delivery.metrics, delivery._renew_producer, delivery._wedged = metrics, False, []
    delivery.aborts = AbortBudget(settings.kafka, metrics, sleep=lambda _s: None)
    release = threading.Event()
    records = [InputRecord("in", 0, 5, b"k", b"v", consumed_at=0.0)]
    try:
        for _ in range(delivery_module.MAX_WEDGED_PRODUCERS):
            with pytest.raises(CallHungError) as hung:
                bounded_call(release.wait, 0.01, "send_offsets_to_transaction")
            delivery._abandon_producer(hung.value, records)
        with pytest.raises(CallHungError) as hung:
            bounded_call(release.wait, 0.01, "send_offsets_to_transaction")
        with pytest.raises(FatalKafkaError, match="4 transactional producers are wedged"):
            delivery._abandon_producer(hung.value, records)
    finally:
        release.set()
