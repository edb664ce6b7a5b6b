"""Transactional Kafka calls: retried with backoff while retriable, the last failure raised."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError, KafkaException

from heimdall_stream.stream.delivery import TRANSACTIONAL_ATTEMPTS, Delivery


def _error(retriable: bool) -> KafkaException:
    return KafkaException(KafkaError(KafkaError._TIMED_OUT, "coordinator moving", retriable=retriable))


class Flaky:
    """A transactional API that fails ``failures`` times, then answers."""

    __name__ = "commit_transaction"

    def __init__(self, failures: int, retriable: bool = True) -> None:
        self.failures = failures
        self.retriable = retriable
        self.timeouts: list[float] = []

    def __call__(self, timeout: float) -> str:
        self.timeouts.append(timeout)
        if len(self.timeouts) <= self.failures:
            raise _error(self.retriable)
        return "done"


@pytest.fixture
def delivery() -> Delivery:
    # ``_call`` needs no producer or consumer: skip the constructor that would create them.
    return Delivery.__new__(Delivery)


def test_retriable_errors_are_retried_with_growing_waits(delivery: Delivery) -> None:
    waits: list[float] = []
    method = Flaky(failures=3)
    assert delivery._call(method, 7.0, sleep=waits.append) == "done"
    assert method.timeouts == [7.0] * 4
    assert len(waits) == 3 and waits[0] == pytest.approx(0.1, rel=0.11)
    assert waits[0] < waits[1] < waits[2] <= 2.0 * 1.1


def test_the_final_attempt_raises(delivery: Delivery) -> None:
    waits: list[float] = []
    method = Flaky(failures=100)
    with pytest.raises(KafkaException):
        delivery._call(method, 1.0, sleep=waits.append)
    assert TRANSACTIONAL_ATTEMPTS == 6  # five retries after the first call, as before
    assert len(method.timeouts) == TRANSACTIONAL_ATTEMPTS and len(waits) == TRANSACTIONAL_ATTEMPTS - 1
    assert max(waits) <= 2.0 * 1.1


def test_errors_that_are_not_retriable_are_raised_at_once(delivery: Delivery) -> None:
    waits: list[float] = []
    method = Flaky(failures=1, retriable=False)
    with pytest.raises(KafkaException):
        delivery._call(method, 1.0, sleep=waits.append)
    assert len(method.timeouts) == 1 and waits == []

    def broken(_timeout: float) -> None:
        raise ValueError("not a Kafka error")

    with pytest.raises(ValueError):
        delivery._call(broken, 1.0, sleep=waits.append)
    assert waits == []
