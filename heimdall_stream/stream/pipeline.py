"""Batches scored on worker threads, handed back strictly in the order they were handed out.

The stream loop keeps consuming and committing while ``workers`` batches are scored at once
(onnxruntime, the FFTs and Avro decode release the GIL in their long calls, so batches of
several captures keep every core busy).  A batch is delivered only after every batch handed out
before it, so the input offsets are committed in consumption order and exactly-once holds as
with a single thread.  At most ``2 × workers`` batches are held (scoring or scored and waiting
for their turn): in-flight memory stays bounded whatever the load.

At light load a hand-off costs more than it saves: a batch of at most ``inline_max_captures``
handed out while the pipeline is empty is scored on the calling (loop) thread instead (which
consumes nothing meanwhile), and joins the FIFO already done.  Alone, one thread scores a
capture in the time it takes; handed to a worker, the capture's features and inference share
the GIL with the loop thread and took twice as long at half load (README, Latency at half load).
Only while the loop can afford it, though (``stream.loop_load``): a loop that scores as well as
commits every capture can fall behind the input while the workers sit idle.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass
from typing import Any

from heimdall_stream.processing.processor import BatchProcessor
from heimdall_stream.processing.records import InputRecord, ScoredBatch
from heimdall_stream.stream.loop_load import LoopLoad

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Held:
    records: list[InputRecord]
    future: Future[ScoredBatch]


class BatchPipeline:
    """A FIFO of batches being scored by a pool of worker threads."""

    def __init__(
        self,
        processor: BatchProcessor,
        workers: int,
        inline_max_captures: int = 0,
        load: LoopLoad | None = None,
    ) -> None:
        self.processor = processor
        self.workers = workers
        self.inline_max_captures = inline_max_captures
        self.load = load or LoopLoad(time.monotonic)
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="heimdall-batch")
        self._queue: deque[_Held] = deque()

    def __len__(self) -> int:
        return len(self._queue)

    def captures(self) -> int:
        """Captures handed out and not yet taken back."""
        return sum(len(held.records) for held in self._queue)

    def has_idle_worker(self) -> bool:
        """Whether a batch handed out now would start at once (and the FIFO has room)."""
        busy = sum(1 for held in self._queue if not held.future.done())
        return busy < self.workers and len(self._queue) < 2 * self.workers

    def submit(self, records: Sequence[InputRecord]) -> None:
        """Hand a batch to the workers (a small one, with nothing else held, may be scored here)."""
        small = not self._queue and len(records) <= self.inline_max_captures
        inline = small and self.load.inline_affordable()  # may start a window: count them after
        self.load.submitted(len(records))
        if not inline:
            self._queue.append(_Held(list(records), self._pool.submit(self.processor.process, records)))
            return
        future: Future[ScoredBatch] = Future()
        try:
            future.set_result(self.load.score_inline(lambda: self.processor.process(records), len(records)))
        except Exception as exc:  # raised by ready(), as a worker's would be
            future.set_exception(exc)
        self._queue.append(_Held(list(records), future))

    def ready(self) -> list[ScoredBatch]:
        """The scored batches at the head of the FIFO, in order (a worker's error is raised)."""
        done: list[ScoredBatch] = []
        while self._queue and self._queue[0].future.done():
            scored = self._queue[0].future.result()  # a failed batch stays held, for discard()
            self._queue.popleft()
            done.append(scored)
        return done

    def wait_for_progress(self, timeout: float, also: Future[Any] | None = None) -> None:
        """Block until any batch being scored is done (or ``also`` is done), or ``timeout`` passes.

        Any batch, not only the oldest: a worker that finishes a younger batch is idle, and the
        loop must wake to hand it the next one (waiting for the oldest left it idle for as long
        as the oldest took longer).  With the FIFO full nothing new can be handed out, so only
        the oldest is waited on then.  With every batch scored only ``also`` (the transaction in
        flight, which must end before the head can be committed) is waited on.
        """
        if self.has_idle_worker():
            return  # one finished already: the caller hands it the next batch
        futures: list[Future[Any]] = [] if also is None else [also]
        held = list(self._queue)[:1] if len(self._queue) >= 2 * self.workers else self._queue
        futures.extend(h.future for h in held if not h.future.done())
        if futures:
            self.load.wait(lambda: wait_futures(futures, timeout=timeout, return_when=FIRST_COMPLETED))

    def drain(self) -> list[ScoredBatch]:
        """Every batch still held, once scored, in order."""
        return [self._queue.popleft().future.result() for _ in range(len(self._queue))]

    def discard(self) -> list[InputRecord]:
        """Throw every held batch away (after it is scored); return their records to rewind."""
        records: list[InputRecord] = []
        while self._queue:
            held = self._queue.popleft()
            records.extend(held.records)
            try:
                scored = held.future.result()
            except Exception as exc:
                log.warning("a discarded batch had failed: %s", exc)
                continue
            self.processor.discard(scored)
        return records

    def close(self) -> None:
        """Stop the workers (after what they hold is finished)."""
        self._pool.shutdown(wait=True)
