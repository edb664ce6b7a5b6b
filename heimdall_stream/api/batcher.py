"""Micro-batching of concurrent requests on the API's event loop, with a bounded queue.

Captures of every request wait in one queue of at most ``max_queue``; a request that does not
fit is refused at once (``OverloadedError``, answered 429 with Retry-After), so the queue, and the
memory and latency behind it, never grow without bound.  A batch is formed as soon as a worker
is idle: it takes up to ``max_batch_size`` captures, waiting at most ``max_wait_s`` after the
oldest one arrived for companions.  While every worker is busy, requests accumulate, so batches
grow with the load (like the stream's batcher).  Scoring runs on the executor's threads, never
on the event loop and never on the stream's workers; a capture whose client has gone away
before its batch formed is not scored.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor

from heimdall_stream.api.metrics import ApiMetrics
from heimdall_stream.api.scoring import Job, Outcome

ScoreFn = Callable[[Sequence[Job]], list[Outcome]]


class OverloadedError(Exception):
    """The API cannot take this request now: 429 (queue full) or 503 (stopping)."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


class RequestBatcher:
    """A bounded queue of jobs, drained in micro-batches by at most ``workers`` concurrent scorings."""

    def __init__(
        self,
        score: ScoreFn,
        executor: Executor,
        metrics: ApiMetrics,
        *,
        max_batch_size: int,
        max_wait_s: float,
        max_queue: int,
        workers: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._score = score
        self._executor = executor
        self._metrics = metrics
        self._max_batch = max_batch_size
        self._max_wait = max_wait_s
        self._max_queue = max_queue
        self._clock = clock
        self._pending: deque[tuple[Job, asyncio.Future[Outcome]]] = deque()
        self._wake = asyncio.Event()
        self._idle = asyncio.Semaphore(workers)
        self._scoring: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def __len__(self) -> int:
        return len(self._pending)

    def start(self) -> None:
        """Start forming batches (call on the event loop that will serve the requests)."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name="heimdall-api-batcher")

    async def stop(self) -> None:
        """Refuse new jobs, fail the waiting ones with 503, let the batches being scored finish."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        while self._pending:
            _job, future = self._pending.popleft()
            if not future.done():
                future.set_exception(OverloadedError(503, "stopping", "the predict API is stopping"))
        self._metrics.queued.set(0)
        if self._scoring:
            await asyncio.gather(*self._scoring, return_exceptions=True)

    async def submit(self, jobs: Sequence[Job]) -> list[Outcome]:
        """Queue the jobs of one request and wait for their outcomes (in order).

        Raises ``OverloadedError`` at once when they do not all fit in the queue (nothing of the
        request is queued then) or when the API is stopping.
        """
        if self._closed:
            raise OverloadedError(503, "stopping", "the predict API is stopping")
        if len(self._pending) + len(jobs) > self._max_queue:
            raise OverloadedError(
                429,
                "queue_full",
                f"{len(self._pending)} captures are waiting (at most {self._max_queue}); try again",
            )
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in jobs]
        self._pending.extend(zip(jobs, futures, strict=True))
        self._metrics.queued.set(len(self._pending))
        self._wake.set()
        try:
            return list(await asyncio.gather(*futures))
        except asyncio.CancelledError:
            for future in futures:  # the client went away: its waiting captures are skipped
                future.cancel()
            raise

    async def _run(self) -> None:
        while True:
            if not self._pending:
                self._wake.clear()
                await self._wake.wait()
                continue
            await self._idle.acquire()  # a worker is free: form a batch now
            try:
                await self._fill()
                batch = self._take()
            except BaseException:
                self._idle.release()
                raise
            if not batch:
                self._idle.release()
                continue
            task = asyncio.get_running_loop().create_task(self._score_batch(batch))
            self._scoring.add(task)
            task.add_done_callback(self._scoring.discard)

    async def _fill(self) -> None:
        """Wait for companions until the batch is full or the oldest job has waited ``max_wait``."""
        while self._pending and len(self._pending) < self._max_batch:
            left = self._pending[0][0].arrived + self._max_wait - self._clock()
            if left <= 0:
                return
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), left)
            except TimeoutError:
                return

    def _take(self) -> list[tuple[Job, asyncio.Future[Outcome]]]:
        batch: list[tuple[Job, asyncio.Future[Outcome]]] = []
        while self._pending and len(batch) < self._max_batch:
            job, future = self._pending.popleft()
            if not future.done():  # cancelled: nobody waits for it any more
                batch.append((job, future))
        self._metrics.queued.set(len(self._pending))
        return batch

    async def _score_batch(self, batch: list[tuple[Job, asyncio.Future[Outcome]]]) -> None:
        try:
            self._metrics.batch_size.observe(len(batch))
            loop = asyncio.get_running_loop()
            jobs = [job for job, _ in batch]
            try:
                outcomes = await loop.run_in_executor(self._executor, self._score, jobs)
            except Exception as exc:  # a bug or an unreachable dependency: every request of it fails
                for _job, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                return
            for (_job, future), outcome in zip(batch, outcomes, strict=True):
                if not future.done():
                    future.set_result(outcome)
        finally:
            self._idle.release()
