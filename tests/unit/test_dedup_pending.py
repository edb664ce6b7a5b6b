"""Pending dedup marks, written before the commit: repeats stopped, re-runs never mistaken.

A crash between a transaction's commit and its done marks must not let an upstream repeat
(the same ``capture_id`` at another offset) through, and a batch whose transaction aborted must
run again in full (its own records are not repeats).
"""

from __future__ import annotations

import dataclasses

from heimdall_stream.models.routing import ModelSet
from heimdall_stream.processing.dedup import pending_mark
from heimdall_stream.processing.records import InputRecord
from heimdall_stream.processing.store import InMemoryStore
from tests.unit.test_processor import _captures, _encoded, _metric, _processor, model  # noqa: F401


def _at(records: list[InputRecord], shift: int) -> list[InputRecord]:
    """The same messages at other offsets: what an upstream repeat looks like."""
    return [dataclasses.replace(r, offset=r.offset + shift) for r in records]


def test_the_store_skips_a_mark_that_names_the_asking_record():
    store = InMemoryStore()
    mine, other = b"pending:in:0:5", b"pending:in:0:9"
    store.mark_done(["a", "b"], {"a": mine, "b": other})
    store.mark_done(["c"])  # a done mark stops everyone
    assert store.filter_done(["a", "b", "c", "d"], {"a": mine, "b": mine, "c": b"1x"}) == {"b", "c"}
    assert store.filter_done(["a"]) == {"a"}


def test_a_crash_after_the_commit_still_stops_upstream_repeats(model):  # noqa: F811
    store = InMemoryStore()
    first, _ = _processor(ModelSet.single(model), store=store)
    records = _encoded(_captures(3, prefix="win"))
    scored = first.process(records)
    first.before_commit(scored)
    # ... the transaction commits, and the instance dies before after_commit: no done marks,
    # and the recent-id memory dies with it.  A new instance sees the captures again upstream.
    restarted, metrics = _processor(ModelSet.single(model), store=store)
    repeats = restarted.process(_at(records, 1000))
    assert not repeats.results
    assert _metric(metrics, "heimdall_dedup_hits_total") == 3


def test_an_aborted_batch_runs_again_in_full_even_after_a_restart(model):  # noqa: F811
    store = InMemoryStore()
    first, _ = _processor(ModelSet.single(model), store=store)
    records = _encoded(_captures(3, prefix="ab"))
    scored = first.process(records)
    first.before_commit(scored)
    first.discard(scored)  # aborted: the same records are consumed again
    again = first.process(records)
    assert len(again.results) == 3
    restarted, _ = _processor(ModelSet.single(model), store=store)
    assert len(restarted.process(records).results) == 3  # died before the commit: same records
    assert pending_mark(records[0]) == f"pending:{records[0].topic}:0:{records[0].offset}".encode()


def test_after_the_commit_the_done_mark_stops_the_record_itself(model):  # noqa: F811
    store = InMemoryStore()
    first, _ = _processor(ModelSet.single(model), store=store, recent_ids=0)
    records = _encoded(_captures(2, prefix="done"))
    scored = first.process(records)
    first.before_commit(scored)
    first.after_commit(scored)
    # Offsets reset by an operator replays committed records: still suppressed, as before.
    assert not first.process(records).results
