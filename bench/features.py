"""Feature extraction throughput: the optimised ``extract_features`` against the reference.

``python -m bench.features`` prints captures/s of ``assemble_batch`` + ``extract_features`` per
batch size for the reference implementation (the straightforward one kept in
tests/unit/test_features.py, with the former assemble_batch) and the current one, measured in
the same run with the two interleaved repeat by repeat, as medians; then workers=1 against
workers=2 at batch 32.  On a small shared machine only the medians and the ratios are worth
quoting.  Captures are decoded from their wire encoding (7 receivers × 10,000 CI16 samples), as
the consumer sees them.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from heimdall_stream.lab.simulator import IqSimulator
from heimdall_stream.models.features import assemble_batch, extract_features
from heimdall_stream.network import load_network
from heimdall_stream.wire.codec import capture_codec
from heimdall_stream.wire.messages import IqCapture
from tests.unit.test_features import reference_extract_features

NETWORK = load_network()
SAMPLES = 10_000


def captures(count: int, seed: int = 0) -> list[IqCapture]:
    """Decoded simulated captures (default link model: a few receivers offline or unsynced)."""
    sim = IqSimulator(NETWORK, seed=seed)
    codec = capture_codec()
    return [codec.decode(codec.encode(sim.generate(i).capture)) for i in range(count)]


def reference_assemble_batch(
    captures: Sequence[IqCapture], slots: Mapping[str, int], sample_count: int
) -> tuple[Any, Any, Any, Any]:
    """``assemble_batch`` as it was (np.zeros for the whole batch), for the reference timings."""
    batch = len(captures)
    iq = np.zeros((batch, len(slots), 2, sample_count), dtype=np.float32)
    mask = np.zeros((batch, len(slots)), dtype=np.float32)
    fs = np.zeros(batch, dtype=np.float64)
    offsets = np.full((batch, len(slots)), np.nan, dtype=np.float64)
    for b, capture in enumerate(captures):
        fs[b] = capture.receivers[0].sample_rate_hz
        for receiver in capture.receivers:
            slot = slots[receiver.receiver_id]
            receiver.write_iq(iq[b, slot])
            mask[b, slot] = 1.0
            if receiver.timestamp_offset_ns is not None:
                offsets[b, slot] = receiver.timestamp_offset_ns * 1e-9
    return iq, mask, fs, offsets


def interleaved_medians(runs: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Median seconds of each callable, run in turn within every repeat (after one warm-up each)."""
    for run in runs.values():
        run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def _runner(
    batch: Sequence[IqCapture],
    extract: Callable[..., Any],
    assemble: Callable[..., Any] = assemble_batch,
    **kwargs: Any,
) -> Callable[[], Any]:
    index = NETWORK.index()

    def run() -> Any:
        iq, mask, fs, offsets = assemble(batch, index, SAMPLES)
        return extract(iq, mask, fs, offsets, **kwargs)

    return run


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args(argv)
    pool = captures(max(*args.batch_sizes, 32))

    print("| batch | reference captures/s | new captures/s | new ÷ reference | max abs diff |")
    print("|---:|---:|---:|---:|---:|")
    for size in args.batch_sizes:
        batch = pool[:size]
        old_run = _runner(batch, reference_extract_features, reference_assemble_batch)
        new_run = _runner(batch, extract_features)
        diff = float(np.nanmax(np.abs(old_run() - new_run())))
        medians = interleaved_medians({"old": old_run, "new": new_run}, args.repeats)
        old, new = size / medians["old"], size / medians["new"]
        print(f"| {size} | {old:.0f} | {new:.0f} | {new / old:.2f} | {diff:.2g} |")

    batch = pool[:32]
    medians = interleaved_medians(
        {
            "1": _runner(batch, extract_features, workers=1),
            "2": _runner(batch, extract_features, workers=2),
        },
        args.repeats,
    )
    one, two = 32 / medians["1"], 32 / medians["2"]
    print()
    print("| batch 32 | workers=1 captures/s | workers=2 captures/s | 2 ÷ 1 |")
    print("|---:|---:|---:|---:|")
    print(f"| new | {one:.0f} | {two:.0f} | {two / one:.2f} |")


if __name__ == "__main__":
    main()
