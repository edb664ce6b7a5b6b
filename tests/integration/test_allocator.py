"""``heimdall-stream run`` re-executes itself on jemalloc when the library is installed and asked for."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from heimdall_stream.stream.preload import find_library
from tests.conftest import unavailable
from tests.integration.conftest import ConsumerProcess, read_topic, results_of, send_captures, wait_for


def test_the_consumer_runs_on_jemalloc_in_the_same_process_and_serves(make_settings, tmp_path):
    library = find_library("")
    if library is None:
        unavailable(
            "libjemalloc.so.2, the allocator `run` preloads with HEIMDALL_MEMORY__ALLOCATOR=jemalloc",
            "apt-get install libjemalloc2",
        )
    settings = make_settings(memory={"allocator": "jemalloc"})
    log = tmp_path / "consumer.log"
    consumer = ConsumerProcess(settings, log).start()
    assert consumer.proc is not None
    maps = Path(f"/proc/{consumer.proc.pid}/maps")
    try:
        # The pid the parent started is the one that runs: re-executed in place, not forked.
        wait_for(lambda: library in maps.read_text(), 120, "jemalloc mapped into the consumer's process")
        truth = send_captures(settings, 20, seed=5)
        messages = read_topic(
            settings.kafka.bootstrap_servers, settings.kafka.output_topic, expected=20, timeout=180
        )
        assert consumer.alive()
    finally:
        if consumer.alive():
            assert consumer.terminate() == 0
    counts = Counter(result.capture_id for result in results_of(messages))
    assert set(counts) == set(truth) and set(counts.values()) == {1}
    text = log.read_text()
    assert f"memory: jemalloc ({library})" in text
    assert "malloc is not glibc's: its settings (memory.malloc_*, trim) left alone" in text
