"""The worker pipeline hands batches back in order, keeps a failed one for discard, and the
processor gives back its dedup claims on every path (no Kafka: a stand-in processor, or the real
one on a tiny model)."""

from __future__ import annotations

import random
import threading
import time

import pytest

from heimdall_stream.models.routing import ModelSet
from heimdall_stream.processing.records import InputRecord, ScoredBatch
from heimdall_stream.stream.pipeline import BatchPipeline
from tests.unit.test_processor import (
    _captures,
    _encoded,
    _metric,
    _processor,
    model,  # noqa: F401 - the tiny model fixture
)


class Scorer:
    """Stands in for the processor: random short work per batch, optionally failing one."""

    def __init__(self, fail_batch: int | None = None) -> None:
        self.fail_batch = fail_batch
        self.discarded: list[str] = []
        self._lock = threading.Lock()

    def process(self, records: list[InputRecord]) -> ScoredBatch:
        time.sleep(random.uniform(0, 0.02))
        if records[0].offset == self.fail_batch:
            raise RuntimeError("boom")
        return ScoredBatch(list(records), f"b{records[0].offset}")

    def discard(self, scored: ScoredBatch) -> None:
        with self._lock:
            self.discarded.append(scored.batch_id)


def _batch(n: int) -> list[InputRecord]:
    return [InputRecord("in", 0, n, None, b"", 0.0)]


def test_batches_come_back_in_the_order_they_were_handed_out():
    pipeline = BatchPipeline(Scorer(), workers=3)  # type: ignore[arg-type]
    seen: list[str] = []
    for n in range(20):
        while not pipeline.has_idle_worker():
            pipeline.wait_for_progress(1.0)
            seen += [b.batch_id for b in pipeline.ready()]
        pipeline.submit(_batch(n))
        assert len(pipeline) <= 6  # bounded: 2 x workers
    seen += [b.batch_id for b in pipeline.drain()]
    pipeline.close()
    assert seen == [f"b{n}" for n in range(20)]


class Gated:
    """Stands in for the processor: each batch is scored when the test opens its gate."""

    def __init__(self) -> None:
        self.gates = {n: threading.Event() for n in range(2)}

    def process(self, records: list[InputRecord]) -> ScoredBatch:
        self.gates[records[0].offset].wait(timeout=60)
        return ScoredBatch(list(records), f"b{records[0].offset}")


def test_a_younger_batch_done_first_wakes_the_waiter_while_the_oldest_is_still_scored():
    scorer = Gated()
    pipeline = BatchPipeline(scorer, workers=2)  # type: ignore[arg-type]
    pipeline.submit(_batch(0))
    pipeline.submit(_batch(1))
    assert not pipeline.has_idle_worker()
    scorer.gates[1].set()  # the younger one finishes; the oldest is still being scored
    woke = threading.Event()
    waiter = threading.Thread(target=lambda: (pipeline.wait_for_progress(60.0), woke.set()))
    waiter.start()
    assert woke.wait(timeout=30), "the loop slept on the oldest batch while a worker was idle"
    assert pipeline.has_idle_worker()
    assert pipeline.ready() == []  # still handed back in order: the oldest first
    scorer.gates[0].set()
    assert [b.batch_id for b in pipeline.drain()] == ["b0", "b1"]
    waiter.join(timeout=30)
    assert not waiter.is_alive()
    pipeline.close()


def test_a_failed_batch_stays_held_and_discard_returns_every_record():
    scorer = Scorer(fail_batch=1)
    pipeline = BatchPipeline(scorer, workers=2)  # type: ignore[arg-type]
    for n in range(4):
        pipeline.submit(_batch(n))
    deadline = time.monotonic() + 30
    while not all(held.future.done() for held in pipeline._queue) and time.monotonic() < deadline:
        time.sleep(0.01)
    with pytest.raises(RuntimeError):
        pipeline.ready()  # batch 0 comes off, batch 1 raises and stays
    assert len(pipeline) == 3
    records = pipeline.discard()
    pipeline.close()
    assert sorted(r.offset for r in records) == [1, 2, 3]
    assert sorted(scorer.discarded) == ["b2", "b3"]  # the failed one released its own claims


class ThreadNoting(Scorer):
    """A ``Scorer`` that notes which thread scored each batch."""

    def __init__(self, fail_batch: int | None = None) -> None:
        super().__init__(fail_batch)
        self.threads: dict[int, str] = {}

    def process(self, records: list[InputRecord]) -> ScoredBatch:
        self.threads[records[0].offset] = threading.current_thread().name
        return super().process(records)


def test_a_small_batch_with_nothing_held_is_scored_on_the_calling_thread_and_kept_in_order():
    scorer = ThreadNoting()
    pipeline = BatchPipeline(scorer, workers=2, inline_max_captures=1)  # type: ignore[arg-type]
    pipeline.submit(_batch(0))  # nothing held: scored here, done on return
    assert scorer.threads[0] == threading.current_thread().name
    assert len(pipeline) == 1 and pipeline.has_idle_worker()
    pipeline.submit(_batch(1))  # batch 0 still held (not taken back): a worker's
    pipeline.submit(_batch(2) + _batch(3))  # larger than the limit: a worker's, whatever is held
    assert [b.batch_id for b in pipeline.drain()] == ["b0", "b1", "b2"]
    pipeline.submit(_batch(4) + _batch(5))  # nothing held, but two captures: a worker's
    assert [b.batch_id for b in pipeline.drain()] == ["b4"]
    pipeline.close()
    assert all(scorer.threads[n].startswith("heimdall-batch") for n in (1, 2, 4))


def test_a_batch_scored_here_that_fails_is_raised_by_ready_and_held_for_discard():
    scorer = Scorer(fail_batch=0)
    pipeline = BatchPipeline(scorer, workers=2, inline_max_captures=4)  # type: ignore[arg-type]
    pipeline.submit(_batch(0))  # the error is not raised by submit: the loop meets it in ready()
    with pytest.raises(RuntimeError):
        pipeline.ready()
    assert len(pipeline) == 1
    assert [r.offset for r in pipeline.discard()] == [0]
    pipeline.close()


def test_an_unanticipated_error_dead_letters_the_version_and_releases_nothing_early(model, monkeypatch):  # noqa: F811
    processor, metrics = _processor(ModelSet.single(model))
    records = _encoded(_captures(3, prefix="fail"))
    monkeypatch.setattr(model, "prepare", lambda captures: (_ for _ in ()).throw(RuntimeError("boom")))
    broken = processor.process(records)
    monkeypatch.undo()
    assert not broken.results and {d.reason for d in broken.dead_letters} == {"internal"}
    assert len(broken.dead_letters) == 3 and "RuntimeError: boom" in broken.dead_letters[0].message
    processor.discard(broken)  # its transaction aborted: the captures run again, and now score
    assert len(processor.process(records).results) == 3
    processor.after_commit(broken)
    assert _metric(metrics, "heimdall_dead_letters_total", reason="internal") == 3


def test_a_repeat_in_a_batch_behind_is_not_scored_while_the_first_is_in_flight(model):  # noqa: F811
    processor, _ = _processor(ModelSet.single(model))
    capture = _captures(1, prefix="twice")[0]
    first = processor.process(_encoded([capture]))
    behind = processor.process(_encoded([capture]))  # the first is not committed yet
    assert len(first.results) == 1 and not behind.results
    processor.discard(behind)
    processor.after_commit(first)
    again = processor.process(_encoded([capture]))
    assert not again.results  # now done: marked in the store and remembered
