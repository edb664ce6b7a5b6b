"""The committer runs one transaction at a time off the loop thread and hands its outcome back.

No Kafka: a stand-in delivery whose commit blocks until the test lets it go, so the test sees
the loop free while a transaction is in flight, and a second one refused until it is collected.
"""

from __future__ import annotations

import threading

import pytest
from confluent_kafka import TopicPartition
from prometheus_client import CollectorRegistry

from heimdall_stream.config import Settings
from heimdall_stream.errors import FatalKafkaError, InternalError
from heimdall_stream.metrics import Metrics
from heimdall_stream.processing.records import InputRecord, ScoredBatch
from heimdall_stream.stream.committer import Committer
from heimdall_stream.stream.delivery import commits_off_the_loop, next_offsets

WAIT_S = 30.0  # a generous bound: these waits end as soon as the condition holds


class Delivery:
    """Stands in for ``stream.delivery.Delivery``: commit blocks on ``release``, then answers."""

    exactly_once = True
    acked = None

    def __init__(self, answer: bool | Exception = True) -> None:
        self.answer = answer
        self.release = threading.Event()
        self.entered = threading.Event()
        self.offsets_thread: int | None = None
        self.metadata_thread: int | None = None
        self.commit_thread: int | None = None
        self.committed: list[tuple[list[str], list[TopicPartition]]] = []

    def offsets_of(self, records: list[InputRecord]) -> list[TopicPartition]:
        self.offsets_thread = threading.get_ident()
        return next_offsets(records)

    def group_metadata(self) -> str:
        self.metadata_thread = threading.get_ident()
        return "generation-1"

    def commit(self, batches: list[ScoredBatch], offsets: list[TopicPartition], metadata: str) -> bool:
        assert metadata == "generation-1"
        self.commit_thread = threading.get_ident()
        self.entered.set()
        assert self.release.wait(WAIT_S)
        if isinstance(self.answer, Exception):
            raise self.answer
        self.committed.append(([b.batch_id for b in batches], offsets))
        return self.answer


class Processor:
    """Records the pending dedup marks written before each commit."""

    def __init__(self) -> None:
        self.pended: list[str] = []

    def before_commit(self, scored: ScoredBatch) -> None:
        self.pended.append(scored.batch_id)


def _batch(offset: int) -> ScoredBatch:
    return ScoredBatch([InputRecord("in", offset % 2, offset, None, b"", 0.0)], f"b{offset}")


def _committer(delivery: Delivery, processor: Processor, overlap: bool = True) -> Committer:
    return Committer(delivery, processor, Metrics(CollectorRegistry()), overlap=overlap)  # type: ignore[arg-type]


def test_the_loop_is_free_while_its_transaction_commits_and_the_next_waits_for_the_outcome():
    delivery, processor = Delivery(), Processor()
    committer = _committer(delivery, processor)
    try:
        committer.submit([_batch(4), _batch(5)])
        assert delivery.entered.wait(WAIT_S)
        # In flight: the caller goes on; no second transaction may open meanwhile.
        assert committer.busy and committer.captures() == 2 and committer.pending() is not None
        assert committer.collect(0.0) is None
        with pytest.raises(InternalError):
            committer.submit([_batch(6)])
        delivery.release.set()
        outcome = committer.collect(WAIT_S)
        assert outcome is not None and outcome.committed
        assert [b.batch_id for b in outcome.batches] == ["b4", "b5"]
        assert not committer.busy and committer.collect(0.0) is None
        # Offsets and group metadata were taken on the caller's (the consumer's) thread, and
        # the transaction ran on another.
        assert delivery.offsets_thread == delivery.metadata_thread == threading.get_ident()
        assert delivery.commit_thread not in (None, threading.get_ident())
        assert delivery.committed == [
            (["b4", "b5"], [TopicPartition("in", 0, 5), TopicPartition("in", 1, 6)])
        ]
        assert processor.pended == ["b4", "b5"]
        assert all("commit_wait" in b.stages for b in outcome.batches)
        committer.submit([_batch(6)])  # collected: the next transaction may start
        assert committer.collect(WAIT_S) is not None
    finally:
        delivery.release.set()
        committer.close()


def test_an_aborted_transaction_comes_back_to_be_rewound():
    delivery = Delivery(answer=False)
    delivery.release.set()
    committer = _committer(delivery, Processor())
    try:
        committer.submit([_batch(1)])
        outcome = committer.collect(WAIT_S)
        assert outcome is not None and not outcome.committed and outcome.batches[0].batch_id == "b1"
    finally:
        committer.close()


def test_a_failure_that_stops_the_instance_is_raised_on_the_callers_thread():
    delivery = Delivery(answer=FatalKafkaError("fenced"))
    delivery.release.set()
    committer = _committer(delivery, Processor())
    try:
        committer.submit([_batch(1)])
        with pytest.raises(FatalKafkaError, match="fenced"):
            committer.collect(WAIT_S)
        assert not committer.busy  # nothing left in flight after the failure
    finally:
        committer.close()


def test_without_overlap_the_transaction_runs_inside_submit():
    delivery = Delivery()
    delivery.release.set()
    committer = _committer(delivery, Processor(), overlap=False)
    try:
        committer.submit([_batch(3)])
        assert delivery.commit_thread == threading.get_ident()
        outcome = committer.collect(0.0)
        assert outcome is not None and outcome.committed
    finally:
        committer.close()


@pytest.mark.parametrize(
    ("overlap", "delivery", "off_the_loop"),
    [
        (True, "exactly_once", True),
        (True, "at_least_once", True),
        (False, "exactly_once", False),
        (False, "at_least_once", False),
    ],
)
def test_overlap_commits_off_the_loop_in_either_mode(overlap, delivery, off_the_loop):
    # Off the loop the input is not paused when the producer's queue is full.
    settings = Settings.model_validate(
        {"batching": {"overlap_commit": overlap}, "kafka": {"delivery": delivery}}
    )
    assert commits_off_the_loop(settings) is off_the_loop


class Acked:
    """Stands in for ``stream.acked_offsets.AckedOffsets``: records the thread of every call."""

    def __init__(self) -> None:
        self.stored: list[tuple[int, list[TopicPartition]]] = []
        self.due_checks: list[int] = []

    def store(self, offsets: list[TopicPartition]) -> None:
        self.stored.append((threading.get_ident(), offsets))

    def commit_if_due(self) -> None:
        self.due_checks.append(threading.get_ident())


class AtLeastOnceDelivery(Delivery):
    """At least once: the flush runs on the commit thread, the offsets are stored by the caller."""

    exactly_once = False

    def __init__(self, answer: bool | Exception = True) -> None:
        super().__init__(answer)
        self.acked = Acked()  # type: ignore[assignment]

    def group_metadata(self) -> str:
        raise AssertionError("at least once has no group metadata to send")

    def commit(self, batches: list[ScoredBatch], offsets: list[TopicPartition], metadata: str | None) -> bool:
        assert metadata is None
        return super().commit(batches, offsets, "generation-1")


@pytest.mark.parametrize("overlap", [True, False])
def test_at_least_once_stores_the_offsets_on_the_collecting_thread_once_delivered(overlap):
    delivery, processor = AtLeastOnceDelivery(), Processor()
    delivery.release.set()
    committer = _committer(delivery, processor, overlap=overlap)
    try:
        committer.submit([_batch(4), _batch(5)])
        outcome = committer.collect(WAIT_S)
        assert outcome is not None and outcome.committed
        assert (delivery.commit_thread == threading.get_ident()) is not overlap
        offsets = next_offsets(_batch(4).records + _batch(5).records)
        assert delivery.acked.stored == [(threading.get_ident(), offsets)]
        # The loop thread also sends what is stored, once it is due, whenever it collects.
        assert set(delivery.acked.due_checks) == {threading.get_ident()}
    finally:
        committer.close()


def test_at_least_once_stores_nothing_for_a_flush_that_failed():
    delivery, processor = AtLeastOnceDelivery(answer=False), Processor()
    delivery.release.set()
    committer = _committer(delivery, processor)
    try:
        committer.submit([_batch(7)])
        outcome = committer.collect(WAIT_S)
        assert outcome is not None and not outcome.committed
        assert delivery.acked.stored == []
    finally:
        committer.close()
