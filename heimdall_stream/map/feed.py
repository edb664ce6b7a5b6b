"""The map's reader of the results topic: a consumer thread filling a bounded buffer.

It reads committed results only (``read_committed``: an aborted transaction's results never
show), in a consumer group of its own that commits nothing, since every map process wants every
result from its start point: the end of each partition ("from now") or the first offset at or
after a time (``--from``).  Each decoded result gets a sequence number and goes into a ring
buffer of the newest ``keep``; the browsers' streams read from it by sequence number.  The thread
never waits for a reader: a reader that falls more than ``keep`` results behind skips the ones
it missed (counted as ``skipped``).  A record that does not decode is counted and logged and left
on the topic.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from confluent_kafka import OFFSET_END, Consumer, KafkaError, KafkaException, TopicPartition

from heimdall_stream.errors import DecodeError
from heimdall_stream.map.truth import TruthFile
from heimdall_stream.map.view import result_view
from heimdall_stream.wire.codec import localization_codec

log = logging.getLogger(__name__)
POLL_S = 0.2


@dataclass
class FeedStats:
    """What the feed has done, for /healthz."""

    consumed: int = 0
    undecodable: int = 0
    assigned: int = 0
    last_error: str | None = None
    fatal: bool = False


class ResultFeed:
    """Results of the output topic, newest ``keep`` in memory, numbered from 1."""

    def __init__(
        self,
        config: dict[str, Any],
        topic: str,
        *,
        keep: int,
        start_at: datetime | None = None,
        truth: TruthFile | None = None,
        consumer_factory: Callable[[dict[str, Any]], Any] = Consumer,
    ) -> None:
        self.topic = topic
        self.start_at = start_at
        self.truth = truth
        self.stats = FeedStats()
        # Names this process's numbering in event ids: a browser that comes back to a restarted
        # map must not wait for the new numbers to reach the old ones.
        self.epoch = uuid.uuid4().hex[:8]
        self._config = {
            **config,
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "auto.offset.reset": "latest",
        }
        self._consumer_factory = consumer_factory
        self._buffer: deque[dict[str, Any]] = deque(maxlen=keep)
        self._seq = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="map-feed", daemon=True)

    # ------------------------------------------------------------------ readers (any thread)
    @property
    def last_seq(self) -> int:
        """Sequence number of the newest result (0 before the first)."""
        with self._lock:
            return self._seq

    def since(self, seq: int, limit: int) -> tuple[list[dict[str, Any]], int]:
        """Up to ``limit`` results numbered above ``seq``, oldest first, and how many were skipped.

        Skipped: results above ``seq`` that already left the buffer (a reader that fell behind).
        """
        with self._lock:
            oldest = self._buffer[0]["seq"] if self._buffer else self._seq + 1
            start = max(seq + 1, oldest)
            first = start - oldest  # buffer index of ``start``: sequence numbers are contiguous
            items = [self._buffer[i] for i in range(first, min(first + limit, len(self._buffer)))]
        return items, max(start - seq - 1, 0)

    def healthy(self) -> tuple[bool, dict[str, Any]]:
        """Whether the feed is alive, with its figures."""
        alive = self._thread.is_alive() and not self.stats.fatal
        return alive, {
            "consuming": alive,
            "topic": self.topic,
            "partitions": self.stats.assigned,
            "consumed": self.stats.consumed,
            "undecodable": self.stats.undecodable,
            "buffered": len(self._buffer),
            "last_seq": self.last_seq,
            "last_error": self.stats.last_error,
        }

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> ResultFeed:
        """Start the consumer thread."""
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the thread and close the consumer (leaves its group at once)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    # ------------------------------------------------------------------ the thread
    def _run(self) -> None:
        try:
            consumer = self._consumer_factory(self._config)
        except KafkaException as exc:  # a bad librdkafka option: /healthz says why
            self.stats.fatal, self.stats.last_error = True, str(exc)
            log.error("map feed cannot start: %s", exc)
            return
        try:
            consumer.subscribe([self.topic], on_assign=self._on_assign)
            while not self._stop.is_set():
                message = consumer.poll(POLL_S)
                if message is None:
                    continue
                if message.error() is not None:
                    self._on_error(message.error())
                    continue
                self._add(message.value() or b"")
        except KafkaException as exc:  # e.g. authorization: nothing to retry, /healthz says so
            self.stats.fatal, self.stats.last_error = True, str(exc)
            log.error("map feed stopped: %s", exc)
        except Exception as exc:  # a bug of ours: still say so in /healthz and the log
            self.stats.fatal, self.stats.last_error = True, f"{type(exc).__name__}: {exc}"
            log.exception("map feed stopped")
        finally:
            consumer.close()

    def _on_assign(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        """Start every newly assigned partition at the end, or at the first offset after ``start_at``.

        A lookup that fails (the broker slow to answer) starts the partitions at the end instead
        of stopping the feed: the map goes on showing new results, and /healthz says why the
        earlier ones are missing.
        """
        try:
            self._start_offsets(consumer, partitions)
        except KafkaException as exc:
            self.stats.last_error = f"start offsets not found, showing from now: {exc}"
            log.warning("map feed: %s", self.stats.last_error)
            for tp in partitions:
                tp.offset = OFFSET_END
        self.stats.assigned = len(partitions)
        consumer.assign(partitions)

    def _start_offsets(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        if self.start_at is None:
            # The end offsets are looked up now rather than left to OFFSET_END, so every result
            # committed after the assignment is shown (OFFSET_END is resolved later, at the first
            # fetch, and would skip what was committed in between).
            for tp in partitions:
                tp.offset = consumer.get_watermark_offsets(tp, timeout=30, cached=False)[1]
        else:
            stamp = int(self.start_at.timestamp() * 1000)
            wanted = [TopicPartition(tp.topic, tp.partition, stamp) for tp in partitions]
            found = consumer.offsets_for_times(wanted, timeout=30)
            for tp, hit in zip(partitions, found, strict=True):
                # -1: no record at or after the time, so start at the end
                tp.offset = hit.offset if hit.offset >= 0 else OFFSET_END

    def _on_error(self, error: KafkaError) -> None:
        if error.code() == KafkaError._PARTITION_EOF:
            return
        self.stats.last_error = str(error)
        if error.fatal():
            self.stats.fatal = True
            self._stop.set()
        log.warning("map feed: %s", error)

    def _add(self, value: bytes) -> None:
        try:
            loc = localization_codec().decode(value)
        except DecodeError as exc:
            self.stats.undecodable += 1
            log.warning("map feed: a result does not decode (%s); skipped", exc)
            return
        truth = self.truth.get(loc.capture_id) if self.truth is not None else None
        try:
            view = result_view(loc, 0, truth)
        except (ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
            # a GeoJSON field that is not what it says (empty coordinates, a list for an object)
            self.stats.undecodable += 1
            log.warning("map feed: result %s has unreadable GeoJSON (%s); skipped", loc.capture_id, exc)
            return
        view["received"] = time.time()
        with self._lock:
            self._seq += 1
            view["seq"] = self._seq
            self._buffer.append(view)
        self.stats.consumed += 1
