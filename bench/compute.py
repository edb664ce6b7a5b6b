"""Compute-only benchmarks (no Kafka): decode cost, features throughput, the whole batch path.

Figures are medians over repeats, measured in one run; see bench/README.md for how to read them.
"""

from __future__ import annotations

import statistics
import time
import tracemalloc
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from heimdall_stream.config import LimitsSettings, ModelSettings
from heimdall_stream.lab.simulator import IqSimulator
from heimdall_stream.metrics import Metrics
from heimdall_stream.models.features import assemble_batch, extract_features
from heimdall_stream.models.inference import LoadedModel, load_model
from heimdall_stream.models.registry import file_sha256
from heimdall_stream.models.routing import ModelSet
from heimdall_stream.network import load_network
from heimdall_stream.processing.cache import ResultCache
from heimdall_stream.processing.dedup import Deduplicator
from heimdall_stream.processing.processor import BatchProcessor
from heimdall_stream.processing.records import InputRecord
from heimdall_stream.processing.store import InMemoryStore
from heimdall_stream.wire.codec import capture_codec

NETWORK = load_network()


def _median_seconds(fn: Callable[[], Any], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def encoded_pool(count: int, seed: int = 0) -> list[bytes]:
    """Encoded reference-size captures (7 receivers × 10,000 CI16 samples)."""
    sim = IqSimulator(NETWORK, seed=seed)
    return [capture_codec().encode(sim.generate(i).capture) for i in range(count)]


def decode_cost(pool: list[bytes], repeats: int = 30) -> dict[str, float]:
    """Median decode time per capture, and the bytes allocated per decode against the sample bytes."""
    codec = capture_codec()
    seconds = _median_seconds(lambda: [codec.decode(v) for v in pool], repeats) / len(pool)
    capture = codec.decode(pool[0])
    sample_bytes = sum(len(r.samples) for r in capture.receivers)
    tracemalloc.start()
    codec.decode(pool[0])
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {
        "decode_ms_per_capture": seconds * 1000,
        "message_bytes": len(pool[0]),
        "sample_bytes": sample_bytes,
        "peak_alloc_bytes_per_decode": peak,
        "sample_copies": peak / sample_bytes,
    }


def features_throughput(
    pool: list[bytes], batch_sizes: tuple[int, ...] = (1, 8, 32, 64), repeats: int = 7
) -> dict[str, float]:
    """Captures per second of assemble + extract_features, per batch size."""
    captures = [capture_codec().decode(v) for v in pool]
    out = {}
    for size in batch_sizes:
        batch = (captures * (size // len(captures) + 1))[:size]

        def run(batch=batch) -> None:
            iq, mask, fs, offsets = assemble_batch(batch, NETWORK.index(), 10_000)
            extract_features(iq, mask, fs, offsets)

        out[str(size)] = size / _median_seconds(run, repeats)
    return out


def model_from_file(path: Path) -> LoadedModel:
    """Load an ONNX model file for compute-only runs, with the consumer's onnxruntime settings."""
    model = ModelSettings()
    return load_model(
        path,
        name="bench",
        version="1",
        uri=str(path),
        sha256=file_sha256(path),
        cpu_mem_arena=model.cpu_mem_arena,
        max_run_input_bytes=model.max_run_input_kbytes * 1024,
    )


def pipeline_throughput(
    model: LoadedModel, pool: list[bytes], batch_size: int, repeats: int = 5, workers: int = 1
) -> float:
    """Captures per second of the production batch path (``BatchProcessor``), no Kafka.

    Decode, route, validate, dedup, cache look-up, inference, finish and the after-commit
    bookkeeping, on the in-memory store, with ``workers`` batches scored at once on threads as
    the stream loop does (the compute limit on the same cores); every repeat uses a fresh store,
    so nothing is a dedup or cache hit.
    """
    limits = LimitsSettings()
    records = [InputRecord("bench", 0, i, None, v, 0.0) for i, v in enumerate(pool)]
    models = ModelSet.single(model)

    def run() -> None:
        metrics = Metrics(CollectorRegistry())
        store = InMemoryStore()
        processor = BatchProcessor(
            lambda: models,
            Deduplicator(store, 0, metrics),
            ResultCache(_NoCache()),
            metrics,
            limits=limits,
            confidence=0.95,
            batch_prefix="bench",
        )
        batches = [records[start : start + batch_size] for start in range(0, len(records), batch_size)]
        with ThreadPoolExecutor(workers) as threads:
            for scored in threads.map(processor.process, batches):
                processor.after_commit(scored)

    return len(records) / _median_seconds(run, repeats)


class _NoCache(InMemoryStore):
    """A store that never holds a result, so identical pool captures are all inferred."""

    def put_many(self, items: Mapping[str, bytes]) -> None:
        """Cache nothing."""
