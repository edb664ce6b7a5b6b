"""Aborted transactions in a row: wait longer before each retry, and give up after a bound.

A batch whose transaction aborts runs again.  When the cause repeats (a record the broker
refuses, such as a dead letter larger than the DLQ topic's ``max.message.bytes``; an output
topic deleted while the consumer runs; a missing write ACL), retrying at once would spin on the
same work forever.  ``AbortBudget`` waits before each retry (``HEIMDALL_KAFKA__ABORT_BACKOFF_*``,
doubling), and after ``HEIMDALL_KAFKA__ABORT_RETRIES`` retries without a commit it stops the
instance (``PoisonBatchError``, exit 3) with the reason and where the batch starts.  Nothing
past the batch was committed: the group's offsets stay before it, so a restart (after the cause
is fixed) resumes there.  A commit resets the budget.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence

from confluent_kafka import KafkaError

from heimdall_stream.config import KafkaSettings
from heimdall_stream.errors import FatalKafkaError
from heimdall_stream.metrics import Metrics
from heimdall_stream.processing.records import InputRecord
from heimdall_stream.retry import Backoff

log = logging.getLogger(__name__)
BEAT_DURING_WAIT_S = 5.0  # how often a wait before a retried batch tells /healthz the loop is alive


class PoisonBatchError(FatalKafkaError):
    """The same work aborted more often in a row than ``HEIMDALL_KAFKA__ABORT_RETRIES`` allows."""


class AbortBudget:
    """Counts aborts since the last commit; sleeps before each retry; raises past the bound."""

    def __init__(
        self,
        kafka: KafkaSettings,
        metrics: Metrics,
        *,
        sleep: Callable[[float], object] = time.sleep,
    ) -> None:
        self.retries = kafka.abort_retries
        self.backoff = Backoff(kafka.abort_backoff_first_s, kafka.abort_backoff_max_s)
        self.metrics = metrics
        self.sleep = sleep
        self.aborts = 0

    def committed(self) -> None:
        """A transaction committed: the next failure starts a new count."""
        if self.aborts:
            log.info("committed again after %d aborted attempt(s)", self.aborts)
        self.aborts = 0
        self.backoff.reset()
        self.metrics.consecutive_aborts.set(0)

    def aborted(self, error: KafkaError, records: Sequence[InputRecord]) -> None:
        """One more abort of ``records``: wait before the retry, or stop past the bound."""
        self.aborts += 1
        self.metrics.consecutive_aborts.set(self.aborts)
        where = describe_start(records)
        if self.aborts > self.retries:
            self.metrics.transactions.labels("gave_up").inc()
            raise PoisonBatchError(
                f"gave up on the batch at {where} after {self.aborts} aborted attempts in a row "
                f"(HEIMDALL_KAFKA__ABORT_RETRIES={self.retries}): {error.str()}; nothing past it "
                "was committed, a restart resumes there once the cause is fixed (a record the "
                "broker refuses: raise the topic's max.message.bytes; a deleted topic: recreate "
                "it with `heimdall-stream topics`; a missing ACL: grant it)"
            )
        delay = self.backoff.next_delay()
        log.warning(
            "batch at %s aborted (%d of at most %d retries); retrying in %.1f s: %s",
            where,
            self.aborts,
            self.retries,
            delay,
            error.str(),
        )
        self.sleep(delay)


def waiting_alive(
    stop: threading.Event, beat: Callable[[], None], clock: Callable[[], float] = time.monotonic
) -> Callable[[float], bool]:
    """A wait for ``AbortBudget``: ended by ``stop``, calling ``beat`` every few seconds meanwhile.

    A wait can reach ``KAFKA__ABORT_BACKOFF_MAX_S`` (30 s by default), the heartbeat's own
    timeout: the loop is waiting on purpose, so /healthz must not call it stuck.  True when
    the stop request ended it.
    """

    def wait(seconds: float) -> bool:
        deadline = clock() + seconds
        while (left := deadline - clock()) > 0:
            beat()
            if stop.wait(min(left, BEAT_DURING_WAIT_S)):
                return True
        beat()
        return stop.is_set()

    return wait


def describe_start(records: Sequence[InputRecord]) -> str:
    """Where a batch starts: its lowest offset on each input partition, e.g. ``in[0]@42``."""
    lowest: dict[tuple[str, int], int] = {}
    for record in records:
        key = (record.topic, record.partition)
        lowest[key] = min(lowest.get(key, record.offset), record.offset)
    return ", ".join(f"{t}[{p}]@{o}" for (t, p), o in sorted(lowest.items())) or "(no records)"
