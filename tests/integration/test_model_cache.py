"""One on-disk model cache shared by many fetchers at once (consumers on one host, pods on a volume).

Every round starts several processes, each with two threads, that fetch the same version into
one fresh cache directory at the same moment (a barrier releases them together) and then open
it with onnxruntime.  Before the cache took a per-version lock, a late fetcher deleted the
directory another had just published and was about to load (``NO_SUCHFILE``).
"""

from __future__ import annotations

import multiprocessing
import threading
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from heimdall_stream.models.inference import load_model
from heimdall_stream.models.registry import ModelRegistry

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PROCESSES = 4
THREADS = 2
ROUNDS = 6


def fetch_and_load(tracking_uri: str, cache_dir: str, uri: str, barrier: Any) -> list[tuple[str, str]]:
    """In a child process: several threads fetch ``uri`` into one cache together, then load it."""
    results: list[tuple[str, str]] = []
    errors: list[BaseException] = []

    def one() -> None:
        try:
            barrier.wait(120)
            fetched = ModelRegistry(tracking_uri, Path(cache_dir)).fetch(uri)
            model = load_model(
                fetched.path,
                name=fetched.name,
                version=fetched.version,
                uri=uri,
                sha256=fetched.sha256,
                warm_up_batch=1,
            )
            results.append((model.version, model.sha256))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return results


def test_concurrent_fetchers_of_one_version_all_load_it(mlflow_uri, model_uri, tmp_path):
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager, ProcessPoolExecutor(PROCESSES, mp_context=context) as pool:
        for round_ in range(ROUNDS):
            cache_dir = tmp_path / f"cache-{round_}"
            barrier = manager.Barrier(PROCESSES * THREADS)
            futures = [
                pool.submit(fetch_and_load, mlflow_uri, str(cache_dir), model_uri, barrier)
                for _ in range(PROCESSES)
            ]
            loaded = [item for future in futures for item in future.result(timeout=300)]
            assert len(loaded) == PROCESSES * THREADS
            assert len(set(loaded)) == 1, f"round {round_}: fetchers saw different models: {set(loaded)}"
            leftovers = [p.name for p in cache_dir.rglob("*") if ".discard-" in p.name or p.suffix == ".tmp"]
            assert not leftovers, f"temporary entries left behind: {leftovers}"
