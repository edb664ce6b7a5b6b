"""Aborted transactions in a row: growing waits, a stop past the bound, flush before abort."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException
from prometheus_client import CollectorRegistry

from heimdall_stream.config import KafkaSettings, Settings, load_settings
from heimdall_stream.errors import ConfigurationError, FatalKafkaError
from heimdall_stream.metrics import Metrics
from heimdall_stream.processing.records import InputRecord, ScoredBatch
from heimdall_stream.stream.aborts import AbortBudget, PoisonBatchError, describe_start, waiting_alive
from heimdall_stream.stream.delivery import Delivery, next_offsets

TOO_LARGE = KafkaError(
    KafkaError.MSG_SIZE_TOO_LARGE, "Broker: Message size too large", txn_requires_abort=True
)


def _records(*offsets: int, partition: int = 0) -> list[InputRecord]:
    return [InputRecord("in", partition, o, b"k", b"v", consumed_at=0.0) for o in offsets]


def _budget(retries: int = 3) -> tuple[AbortBudget, Metrics, list[float]]:
    metrics = Metrics(CollectorRegistry())
    waits: list[float] = []
    kafka = KafkaSettings(abort_retries=retries, abort_backoff_first_s=0.5, abort_backoff_max_s=4.0)
    return AbortBudget(kafka, metrics, sleep=waits.append), metrics, waits


def _value(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels or None) or 0.0


def test_each_abort_in_a_row_waits_longer_and_the_one_past_the_bound_stops():
    budget, metrics, waits = _budget(retries=3)
    for _ in range(3):
        budget.aborted(TOO_LARGE, _records(42, 43))
    assert len(waits) == 3 and waits[0] == pytest.approx(0.5, rel=0.11)
    assert waits[0] < waits[1] < waits[2] <= 4.0 * 1.1
    assert _value(metrics, "heimdall_consecutive_aborts") == 3
    with pytest.raises(PoisonBatchError) as stopped:
        budget.aborted(TOO_LARGE, _records(42, 43))
    assert isinstance(stopped.value, FatalKafkaError)  # exit code 3, like any fatal Kafka error
    message = str(stopped.value)
    assert "gave up on the batch at in[0]@42 after 4 aborted attempts in a row" in message
    assert "HEIMDALL_KAFKA__ABORT_RETRIES=3" in message and "Message size too large" in message
    assert "nothing past it was committed" in message
    assert len(waits) == 3  # no wait before giving up
    assert _value(metrics, "heimdall_transactions_total", outcome="gave_up") == 1


def test_a_commit_resets_the_count_and_the_waits():
    budget, metrics, waits = _budget(retries=2)
    budget.aborted(TOO_LARGE, _records(1))
    budget.aborted(TOO_LARGE, _records(1))
    budget.committed()
    assert _value(metrics, "heimdall_consecutive_aborts") == 0
    budget.aborted(TOO_LARGE, _records(5))
    budget.aborted(TOO_LARGE, _records(5))  # two more allowed: the count started again
    assert waits[2] == pytest.approx(waits[0], rel=0.25)


def test_zero_retries_stops_at_the_first_abort():
    budget, _, waits = _budget(retries=0)
    with pytest.raises(PoisonBatchError):
        budget.aborted(TOO_LARGE, _records(0))
    assert waits == []


def test_the_start_of_a_batch_names_every_partition_lowest_offset_first():
    records = _records(9, 7, partition=2) + _records(3, partition=0)
    assert describe_start(records) == "in[0]@3, in[2]@7"


class FakeProducer:
    """A transactional producer whose commit is refused; records the order of the calls."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def begin_transaction(self) -> None:
        self.calls.append("begin")

    def produce(self, *_args: Any, **_kwargs: Any) -> None:
        self.calls.append("produce")

    def send_offsets_to_transaction(self, *_args: Any) -> None:
        self.calls.append("send_offsets")

    def commit_transaction(self, _timeout: float) -> None:
        self.calls.append("commit")
        raise KafkaException(TOO_LARGE)

    def flush(self, _timeout: float) -> int:
        self.calls.append("flush")
        return 0

    def abort_transaction(self, _timeout: float) -> None:
        self.calls.append("abort")


class FakeConsumer:
    def consumer_group_metadata(self) -> object:
        return object()


def test_a_refused_commit_flushes_then_aborts_then_waits_and_finally_stops():
    settings = Settings(kafka={"abort_retries": 1, "abort_backoff_first_s": 0.25})
    metrics = Metrics(CollectorRegistry())
    delivery = Delivery.__new__(Delivery)  # no real clients: only the commit path runs
    delivery.settings, delivery.metrics, delivery.exactly_once = settings, metrics, True
    delivery.consumer, delivery._renew_producer = FakeConsumer(), False
    delivery.offsets_of = next_offsets
    producer = delivery.producer = FakeProducer()
    waits: list[float] = []
    delivery.aborts = AbortBudget(settings.kafka, metrics, sleep=waits.append)
    batch = ScoredBatch(_records(10, 11), "b-1")

    assert delivery.commit([batch], next_offsets(batch.records), delivery.group_metadata()) is False
    # librdkafka issue 4849: flush the in-flight produce requests before aborting.
    assert producer.calls == ["begin", "send_offsets", "commit", "flush", "abort"]
    assert len(waits) == 1 and _value(metrics, "heimdall_transactions_total", outcome="aborted") == 1
    with pytest.raises(PoisonBatchError, match=r"in\[0\]@10 after 2 aborted attempts"):
        delivery.commit([batch], next_offsets(batch.records), delivery.group_metadata())
    assert producer.calls.count("abort") == 2  # aborted before giving up: nothing left open
    assert _value(metrics, "heimdall_transactions_total", outcome="committed") == 0


def test_a_wait_before_a_retry_beats_the_heartbeat_and_ends_on_a_stop_request():
    now = [0.0]
    beats: list[float] = []

    class Stop(threading.Event):
        def wait(self, timeout: float | None = None) -> bool:  # the clock moves instead of sleeping
            if not self.is_set():
                now[0] += timeout or 0.0
            return self.is_set()

    stop = Stop()
    wait = waiting_alive(stop, lambda: beats.append(now[0]), lambda: now[0])
    assert wait(30.0) is False and now[0] == 30.0
    assert beats == [0.0, 5.0, 10.0, 15.0, 20.0, 25.0, 30.0], "never longer than 5 s without a beat"
    stop.set()
    assert wait(30.0) is True and now[0] == 30.0, "a stop request ends the wait at once"


def test_a_first_abort_backoff_above_the_longest_is_refused_by_name(monkeypatch):
    monkeypatch.setenv("HEIMDALL_KAFKA__ABORT_BACKOFF_FIRST_S", "60")
    with pytest.raises(
        ConfigurationError, match=r"abort_backoff_first_s \(60.0\) exceeds abort_backoff_max_s"
    ):
        load_settings()
