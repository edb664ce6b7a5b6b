"""A capture stream and a committed-result tail for fault tests: lost, duplicated, time to recover.

``FaultRun`` sends captures at a steady rate on one thread (remembering when each was sent) and
reads the output topic ``read_committed`` on another (remembering when each result arrived), both
on the cluster's direct listeners, so a fault on the consumer's wire does not touch them.

Time to recover, from a moment ``t`` (a kill, or the end of a network fault): the longest any
capture's result was held up past ``t`` (a capture sent after ``t``: its whole time from sent to
committed).  It includes the capture producer's own fail-over when a broker dies (the producer
bypasses the proxy, not the brokers), as a user of the whole pipeline would see it.  Each test
records its figures in ``test-artifacts/cluster-faults.json`` and prints them.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, Producer

from heimdall_stream.lab.publisher import SimulationPlan, publish
from heimdall_stream.network import load_network
from tests.integration.conftest import wait_for

REPO = Path(__file__).resolve().parents[2]
REPORT = REPO / "test-artifacts" / "cluster-faults.json"


@dataclass
class Outcome:
    """What one fault test found."""

    fault: str
    captures: int
    lost: int
    duplicated: int
    recovery_s: float
    detail: str = ""


class FaultRun:
    """Captures sent chunk after chunk until ``finish``; every committed result tailed meanwhile."""

    def __init__(self, direct: str, input_topic: str, output_topic: str, *, rate: float = 20.0) -> None:
        """Start sending to ``input_topic`` and tailing ``output_topic`` on ``direct`` brokers."""
        self.direct, self.input_topic, self.output_topic, self.rate = direct, input_topic, output_topic, rate
        self.prefix = f"f{uuid.uuid4().hex[:6]}"
        self.sent: dict[str, float] = {}  # capture id -> when it was handed to the producer
        self.arrivals: dict[str, list[float]] = {}  # capture id -> when each committed result came
        self.errors: list[BaseException] = []
        self._lock = threading.Lock()
        self._stop_sending = threading.Event()
        self._stop_reading = threading.Event()
        self._sender = threading.Thread(target=self._send, daemon=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._sender.start()

    def _send(self) -> None:
        producer = Producer(
            {"bootstrap.servers": self.direct, "enable.idempotence": True, "linger.ms": 5, "log_level": 0}
        )
        network = load_network()
        chunk = 0
        try:
            while not self._stop_sending.is_set():
                plan = SimulationPlan(
                    count=max(1, round(self.rate)),
                    rate=self.rate,
                    pool=20,
                    seed=chunk,
                    id_prefix=f"{self.prefix}c{chunk}",
                )
                publish(producer, self.input_topic, network, plan, on_sent=self._note_sent)
                chunk += 1
        except BaseException as exc:
            self.errors.append(exc)

    def _note_sent(self, out: Any) -> None:
        if out.truth is not None:
            with self._lock:
                self.sent[out.truth["capture_id"]] = time.monotonic()

    def _read(self) -> None:
        consumer = Consumer(
            {
                "bootstrap.servers": self.direct,
                "group.id": f"fault-reader-{uuid.uuid4().hex}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
                "log_level": 0,
            }
        )
        consumer.subscribe([self.output_topic])
        try:
            while not self._stop_reading.is_set():
                message = consumer.poll(0.2)
                if message is None or message.error() is not None:
                    continue
                with self._lock:
                    self.arrivals.setdefault(message.key().decode(), []).append(time.monotonic())
        except BaseException as exc:
            self.errors.append(exc)
        finally:
            consumer.close()

    def results(self) -> int:
        """Distinct captures with a committed result so far."""
        with self._lock:
            return len(self.arrivals)

    def results_sent_after(self, moment: float) -> int:
        """Committed results of captures sent after ``moment`` (progress made since then)."""
        with self._lock:
            return sum(1 for cid, at in self.sent.items() if at > moment and cid in self.arrivals)

    def caught_up(self, moment: float) -> bool:
        """Whether every capture sent before ``moment`` has a committed result."""
        with self._lock:
            return all(cid in self.arrivals for cid, at in self.sent.items() if at <= moment)

    def recovery_s(self, moment: float) -> float:
        """The longest any result was held up by the fault at ``moment``, in seconds.

        For a capture sent before ``moment``, its result's delay past ``moment``; for one sent
        after, its whole end-to-end time (sent to committed).  Normal traffic takes a fraction of
        a second; captures stuck behind the fault take as long as the fault held them.
        """
        with self._lock:
            delays = [
                arrived[0] - max(sent_at, moment)
                for cid, sent_at in self.sent.items()
                if (arrived := self.arrivals.get(cid)) and arrived[0] > moment
            ]
        return max(delays, default=0.0)

    def wait_progress(
        self, moment: float, count: int, timeout: float, what: str, consumer: Any = None
    ) -> float:
        """Wait until ``count`` captures sent after ``moment`` have results; when that was.

        On a time-out the error says how far the sender and the consumer got (``consumer``: a
        ``ConsumerThread`` whose metrics to show).
        """
        try:
            return wait_for(
                lambda: self._healthy() and self.results_sent_after(moment) >= count, timeout, what
            )
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}; {self.progress(moment, consumer)}") from None

    def progress(self, moment: float, consumer: Any = None) -> str:
        """Where the run stands: captures sent, results, and the consumer's counters."""
        with self._lock:
            sent_after = sum(1 for at in self.sent.values() if at > moment)
            last_sent = max(self.sent.values(), default=moment)
            text = (
                f"{len(self.sent)} captures sent ({sent_after} after the fault, the last "
                f"{time.monotonic() - last_sent:.0f} s ago), {len(self.arrivals)} results"
            )
        if consumer is not None:
            names = ("heimdall_captures_consumed_total", "heimdall_results_produced_total",
                     "heimdall_rebalances_total", "heimdall_kafka_errors_total")  # fmt: skip
            counters = {n.removeprefix("heimdall_"): consumer.metric_sum(n) for n in names}
            for outcome in ("committed", "aborted", "producer_renewed", "fatal"):
                counters[f"transactions_{outcome}"] = consumer.metric(
                    "heimdall_transactions_total", outcome=outcome
                )
            text += f"; consumer alive={consumer.thread.is_alive()} " + " ".join(
                f"{k}={v:.0f}" for k, v in counters.items()
            )
        return text

    def _healthy(self) -> bool:
        if self.errors:
            raise self.errors[0]
        return True

    def finish(
        self,
        fault: str,
        since: float | list[float],
        *,
        timeout: float = 300,
        idle_s: float = 3.0,
        detail: str = "",
    ) -> Outcome:
        """Stop sending, wait for every result (then ``idle_s`` more, for late duplicates), count.

        ``since``: the moment the recovery time is measured from; of several faults, the
        slowest recovery counts and each one is listed in the detail.
        """
        self._stop_sending.set()
        self._sender.join(120)
        assert not self._sender.is_alive(), "the capture sender did not stop"
        self._healthy()
        with self._lock:
            wanted = set(self.sent)
        with contextlib.suppress(TimeoutError):  # what is missing then is counted as lost below
            wait_for(lambda: wanted <= set(self.arrivals), timeout, f"{fault}: results still missing")
        settled = time.monotonic() + idle_s
        wait_for(lambda: time.monotonic() >= settled, idle_s + 30, "idle wait")
        self._stop_reading.set()
        self._reader.join(30)
        with self._lock:
            counts = Counter({cid: len(times) for cid, times in self.arrivals.items()})
        moments = since if isinstance(since, list) else [since]
        recoveries = [self.recovery_s(moment) for moment in moments]
        if len(recoveries) > 1:
            detail = f"{detail} (each: {', '.join(f'{r:.1f} s' for r in recoveries)})".strip()
        outcome = Outcome(
            fault=fault,
            captures=len(wanted),
            lost=len(wanted - set(counts)),
            duplicated=sum(n - 1 for n in counts.values()),
            recovery_s=round(max(recoveries), 2),
            detail=detail,
        )
        record(outcome)
        return outcome


RECORDED: list[Outcome] = []  # this session's, for the terminal summary


def record(outcome: Outcome) -> None:
    """Print the figures (visible with -s and in the report) and keep them in the JSON report."""
    print(
        f"\n[cluster fault] {outcome.fault}: {outcome.captures} captures, lost {outcome.lost}, "
        f"duplicated {outcome.duplicated}, recovered in {outcome.recovery_s:.1f} s {outcome.detail}".rstrip(),
        flush=True,
    )
    RECORDED.append(outcome)
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    data = json.loads(REPORT.read_text()) if REPORT.exists() else {}
    data[outcome.fault] = {**asdict(outcome), "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    REPORT.write_text(json.dumps(data, indent=2) + "\n")
