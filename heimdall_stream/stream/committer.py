"""Transactions committed on a thread of their own, one at a time, while the loop consumes.

The stream loop hands the scored batches at the head of its pipeline to ``Committer.submit``
and goes on consuming and scoring what comes next; it hands over more batches only after
``collect`` has returned the outcome of the transaction in flight.  So exactly one transaction
is open at any time and transactions commit in consumption order, as when the loop committed
them itself: only the wait for the broker (``send_offsets_to_transaction``, the produce
acknowledgements and ``commit_transaction``, 3 to 10 round trips) overlaps with consumption.
Before, that wait held up every capture behind it.

Everything but that wait stays on the loop thread: the offsets (and the join's checkpoints)
are computed before the hand-over, and the bookkeeping after a commit or the rewind after an
abort happen in ``collect``'s caller.  The commit thread writes the pending dedup marks
(``before_commit``, a Redis write the worker threads make too) and runs ``Delivery.commit``.

At least once the thread produces and flushes the batches' outputs, and ``collect`` (on the
loop thread: only it may use the consumer) stores their offsets and commits what is stored
once a second (``stream.acked_offsets``).
With ``overlap=False`` the transaction (or flush) runs on the caller's thread inside ``submit``
and the loop consumes nothing meanwhile: the behaviour before, kept as a setting.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass
from typing import Any

from confluent_kafka import TopicPartition

from heimdall_stream.errors import InternalError
from heimdall_stream.metrics import Metrics
from heimdall_stream.processing.processor import BatchProcessor
from heimdall_stream.processing.records import ScoredBatch
from heimdall_stream.stream.delivery import Delivery


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a transaction ended: ``committed``, or aborted (its batches must run again)."""

    batches: list[ScoredBatch]
    committed: bool


@dataclass(frozen=True, slots=True)
class _Flight:
    batches: list[ScoredBatch]
    offsets: list[TopicPartition]
    future: Future[bool]
    submitted_at: float


class Committer:
    """At most one transaction in flight; its outcome is collected by the loop thread."""

    def __init__(
        self,
        delivery: Delivery,
        processor: BatchProcessor,
        metrics: Metrics,
        *,
        overlap: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.delivery = delivery
        self.processor = processor
        self.metrics = metrics
        self.clock = clock
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="heimdall-commit") if overlap else None
        self._flight: _Flight | None = None

    @property
    def busy(self) -> bool:
        """Whether a transaction was handed over and its outcome not collected yet."""
        return self._flight is not None

    def captures(self) -> int:
        """Captures in the transaction in flight."""
        return sum(len(batch.records) for batch in self._flight.batches) if self._flight else 0

    def running_for(self) -> float:
        """Seconds since the transaction in flight was handed over (0 with none)."""
        return self.clock() - self._flight.submitted_at if self._flight else 0.0

    def pending(self) -> Future[bool] | None:
        """The transaction in flight, to wait on alongside other work (None with none, or done)."""
        if self._flight is None or self._flight.future.done():
            return None
        return self._flight.future

    def submit(self, batches: Sequence[ScoredBatch]) -> None:
        """Start the transaction of ``batches`` (in consumption order); the previous one is collected."""
        if self._flight is not None:
            raise InternalError("a transaction is already in flight: collect its outcome first")
        batches = list(batches)
        started = self.clock()
        for batch in batches:
            batch.stages["commit_wait"] = max(started - batch.finished_at, 0.0)
        # On this (the loop's) thread: the join's checkpoints change only here and in collect's
        # caller, and confluent-kafka serialises calls on the consumer (one from the commit
        # thread would wait for the loop's poll).  Exactly once, a rebalance before the offsets
        # reach the coordinator makes this generation stale: the transaction aborts, is rewound.
        offsets = self.delivery.offsets_of([record for batch in batches for record in batch.records])
        metadata = self.delivery.group_metadata() if self.delivery.exactly_once else None
        future: Future[bool]
        if self._pool is not None:
            future = self._pool.submit(self._commit, batches, offsets, metadata, started)
        else:
            future = Future()
            try:
                future.set_result(self._commit(batches, offsets, metadata, started))
            except BaseException as exc:  # handed to collect's caller, as from the thread
                future.set_exception(exc)
        self._flight = _Flight(batches, offsets, future, started)

    def collect(self, timeout: float | None = 0.0) -> Outcome | None:
        """The outcome of the transaction in flight once it is over, waiting up to ``timeout``.

        None while it still runs (or with none).  A failure that stops the instance
        (``FatalKafkaError``, ``PoisonBatchError``) is raised here, on the caller's thread.
        """
        acked = self.delivery.acked
        if acked is not None:
            acked.commit_if_due()
        flight = self._flight
        if flight is None:
            return None
        if not wait_futures([flight.future], timeout=timeout).done:
            return None
        self._flight = None
        committed = flight.future.result()  # raises the transaction's failure
        if committed and acked is not None:
            acked.store(flight.offsets)
        return Outcome(flight.batches, committed)

    def close(self) -> None:
        """Stop the commit thread (after the transaction in flight, if any, is over)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    def _commit(
        self, batches: list[ScoredBatch], offsets: list[TopicPartition], metadata: Any, started: float
    ) -> bool:
        for batch in batches:
            self.processor.before_commit(batch)
        if not self.delivery.commit(batches, offsets, metadata):
            return False
        # One transaction, one observation, however many batches it carried.
        self.metrics.stage_duration.labels("commit").observe(self.clock() - started)
        return True
