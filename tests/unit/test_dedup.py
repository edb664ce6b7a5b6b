"""The in-memory dedup and cache store keeps the same TTL semantics as Redis."""

from __future__ import annotations

from heimdall_stream.dedup import InMemoryStore


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
