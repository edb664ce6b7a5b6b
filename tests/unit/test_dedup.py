"""The in-memory dedup and cache store keeps Redis's TTL semantics; recent ids stay bounded."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from heimdall_stream.processing.dedup import RecentIds
from heimdall_stream.processing.store import InMemoryStore


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_in_memory_store_expires_done_marks_and_cache_entries():
    clock = FakeClock()
    store = InMemoryStore(dedup_ttl_s=10, cache_ttl_s=5, clock=clock)
    store.mark_done(["a"])
    store.put_many({"k": b"v"})
    assert store.filter_done(["a", "b"]) == {"a"} and store.get_many(["k", "x"]) == {"k": b"v"}
    clock.now = 6
    assert store.get_many(["k"]) == {} and store.filter_done(["a"]) == {"a"}
    clock.now = 11
    assert store.filter_done(["a"]) == set() and store.healthy


def test_recent_ids_forget_the_oldest_beyond_capacity_and_refresh_repeats():
    recent = RecentIds(3)
    recent.add(["a", "b", "c"])
    recent.add(["a"])  # refreshed: now the newest
    recent.add(["d"])
    assert "a" in recent and "b" not in recent and {"c", "d"} <= {x for x in "abcd" if x in recent}
    assert len(recent) == 3


def test_recent_ids_with_no_capacity_remember_nothing():
    recent = RecentIds(0)
    recent.add(["a"])
    assert "a" not in recent and len(recent) == 0


@given(st.lists(st.text(min_size=1, max_size=4), max_size=60), st.integers(min_value=1, max_value=10))
def test_recent_ids_hold_exactly_the_last_distinct_ids(ids, capacity):
    recent = RecentIds(capacity)
    for capture_id in ids:
        recent.add([capture_id])
    last: list[str] = []
    for capture_id in reversed(ids):
        if capture_id not in last:
            last.append(capture_id)
    assert {x for x in ids if x in recent} == set(last[:capacity])
