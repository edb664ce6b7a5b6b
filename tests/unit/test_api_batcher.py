"""The API's micro-batcher: batches grow with the load, the queue is bounded, stop is clean."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import pytest
from prometheus_client import CollectorRegistry

from heimdall_stream.api.batcher import OverloadedError, RequestBatcher
from heimdall_stream.api.metrics import ApiMetrics
from heimdall_stream.api.scoring import Job, Outcome, Refusal


class GatedScorer:
    """Scores jobs as refusals carrying their seq; blocks while the gate is closed."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.batches: list[list[int]] = []
        self.entered = threading.Event()

    def __call__(self, jobs: Sequence[Job]) -> list[Outcome]:
        self.batches.append([job.seq for job in jobs])
        self.entered.set()
        self.gate.wait(30)
        return [Refusal(200, "ok", str(job.seq)) for job in jobs]


def jobs(start: int, count: int) -> list[Job]:
    return [Job(seq, b"", None, 0.0) for seq in range(start, start + count)]


async def wait_until(condition, timeout: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "condition not reached"
        await asyncio.sleep(0.005)


def make(scorer: GatedScorer, executor, **kwargs) -> RequestBatcher:
    options = {"max_batch_size": 4, "max_wait_s": 0.0, "max_queue": 8, "workers": 1, **kwargs}
    return RequestBatcher(scorer, executor, ApiMetrics(CollectorRegistry()), **options)


def test_batches_grow_while_the_worker_is_busy_and_answers_keep_their_order() -> None:
    async def scenario() -> None:
        scorer = GatedScorer()
        with ThreadPoolExecutor(1) as executor:
            batcher = make(scorer, executor)
            batcher.start()
            scorer.gate.clear()
            first = asyncio.ensure_future(batcher.submit(jobs(0, 1)))
            await wait_until(scorer.entered.is_set)  # the worker holds batch [0]
            rest = [asyncio.ensure_future(batcher.submit(jobs(seq, 1))) for seq in range(1, 7)]
            await wait_until(lambda: len(batcher) == 6)
            scorer.gate.set()
            answers = await asyncio.gather(first, *rest)
            assert [a[0].message for a in answers] == [str(i) for i in range(7)]
            assert scorer.batches == [[0], [1, 2, 3, 4], [5, 6]]
            await batcher.stop()

    asyncio.run(scenario())


def test_a_full_queue_refuses_the_whole_request_at_once_then_recovers() -> None:
    async def scenario() -> None:
        scorer = GatedScorer()
        with ThreadPoolExecutor(1) as executor:
            batcher = make(scorer, executor, max_batch_size=1, max_queue=3)
            batcher.start()
            scorer.gate.clear()
            held = asyncio.ensure_future(batcher.submit(jobs(0, 1)))
            await wait_until(scorer.entered.is_set)
            waiting = asyncio.ensure_future(batcher.submit(jobs(1, 2)))
            await wait_until(lambda: len(batcher) == 2)
            with pytest.raises(OverloadedError) as refused:
                await batcher.submit(jobs(3, 2))  # 2 + 2 > 3: nothing of it is queued
            assert refused.value.status == 429 and len(batcher) == 2
            scorer.gate.set()
            await asyncio.gather(held, waiting)
            assert [o.message for o in await batcher.submit(jobs(9, 3))] == ["9", "10", "11"]
            await batcher.stop()

    asyncio.run(scenario())


def test_a_client_that_went_away_is_not_scored() -> None:
    async def scenario() -> None:
        scorer = GatedScorer()
        with ThreadPoolExecutor(1) as executor:
            batcher = make(scorer, executor)
            batcher.start()
            scorer.gate.clear()
            held = asyncio.ensure_future(batcher.submit(jobs(0, 1)))
            await wait_until(scorer.entered.is_set)
            gone = asyncio.ensure_future(batcher.submit(jobs(1, 2)))
            kept = asyncio.ensure_future(batcher.submit(jobs(3, 1)))
            await wait_until(lambda: len(batcher) == 3)
            gone.cancel()
            scorer.gate.set()
            await asyncio.gather(held, kept)
            assert scorer.batches == [[0], [3]]
            await batcher.stop()

    asyncio.run(scenario())


def test_stop_fails_what_waits_with_503_and_refuses_new_requests() -> None:
    async def scenario() -> None:
        scorer = GatedScorer()
        with ThreadPoolExecutor(1) as executor:
            batcher = make(scorer, executor, max_batch_size=1)
            batcher.start()
            scorer.gate.clear()
            held = asyncio.ensure_future(batcher.submit(jobs(0, 1)))
            await wait_until(scorer.entered.is_set)
            waiting = asyncio.ensure_future(batcher.submit(jobs(1, 1)))
            await wait_until(lambda: len(batcher) == 1)
            stopping = asyncio.ensure_future(batcher.stop())
            await wait_until(waiting.done)
            with pytest.raises(OverloadedError) as stopped:
                waiting.result()
            assert stopped.value.status == 503
            scorer.gate.set()
            await stopping
            assert (await held)[0].message == "0"  # the batch being scored was answered
            with pytest.raises(OverloadedError):
                await batcher.submit(jobs(5, 1))

    asyncio.run(scenario())


def test_a_scorer_failure_fails_its_requests_only() -> None:
    async def scenario() -> None:
        calls = []

        def score(batch: Sequence[Job]) -> list[Outcome]:
            calls.append(len(batch))
            if len(calls) == 1:
                raise RuntimeError("boom")
            return [Refusal(200, "ok", "fine") for _ in batch]

        with ThreadPoolExecutor(1) as executor:
            batcher = RequestBatcher(
                score,
                executor,
                ApiMetrics(CollectorRegistry()),
                max_batch_size=4,
                max_wait_s=0.0,
                max_queue=8,
                workers=1,
            )
            batcher.start()
            with pytest.raises(RuntimeError, match="boom"):
                await batcher.submit(jobs(0, 1))
            assert (await batcher.submit(jobs(1, 1)))[0].message == "fine"
            await batcher.stop()

    asyncio.run(scenario())
