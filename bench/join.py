"""The per-receiver path against whole captures through Kafka: throughput ratio and the join's added p99.

    python -m bench.join            # two 600-transmission backlog pairs, then 20 s at 10/s each way
    python -m bench.join --quick    # a smoke run (small counts); its JSON goes beside the logs

1. **Throughput**: the same transmissions (distinct, built like ``bench.stream``'s) offered twice
   to ``heimdall-stream run`` on a pre-filled backlog: once as whole captures, once as one part
   per receiver (shuffled within each transmission, each saying how many receivers to expect, so
   a set is emitted as its last part arrives).  The figure is per-receiver ÷ whole-capture sets
   per second, counted like every other throughput here (middle 90 % of results).
2. **Latency beyond the window**: a paced load of parts that do *not* say how many receivers to
   expect, so every set waits for its event-time window (``HEIMDALL_JOIN__WINDOW_MS``) to close,
   which takes a later transmission in the same partition.  The join's added latency is each
   result's visible time − ``captured_at`` − window; its p99 is reported beside the whole-capture
   p99 at the same rate.  Transmissions offered in the last window + 1 s are left out: with
   nothing after them their sets close only when the partition goes idle (``IDLE_MS``).

Ratios within one run are the figures to quote; absolute ones move with the machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from bench.compute import encoded_pool
from bench.recorded import result_path
from bench.run import _features_model, _free_port, _stack_env
from bench.stream import (
    PARTITIONS,
    Bench,
    ProcessWatch,
    distinct_capture,
    open_reader,
    read_results,
    read_seen,
    stop_process,
    summarise,
)
from heimdall_stream.lab.per_receiver import part_value
from heimdall_stream.wire.codec import capture_codec
from heimdall_stream.wire.messages import IqCapture

WINDOW_MS = 2_000


def produce_parts(
    bench: Bench, topic: str, pool: list[IqCapture], count: int, rate: float | None, *, expected: bool
) -> None:
    """Offer ``count`` transmissions as parts, receivers shuffled within each, at ``rate`` (None: flood)."""
    producer = bench.load_producer(topic)  # the whole-capture offer's producer, warmed up alike
    rng = random.Random(3)
    start = time.monotonic()
    for i in range(count):
        if rate:
            while (delay := start + i / rate - time.monotonic()) > 0:
                producer.poll(min(delay, 0.02))
        capture = distinct_capture(pool, i, f"j-{i:06d}")
        receivers = list(capture.receivers)
        rng.shuffle(receivers)
        for receiver in receivers:
            value = part_value(
                capture, receiver, capture.capture_id, expected=len(receivers) if expected else None
            )
            while True:
                try:
                    producer.produce(topic, key=capture.capture_id.encode(), value=value)
                    break
                except BufferError:
                    producer.poll(0.05)
        producer.poll(0)
    producer.flush(120)


def _runner(bench: Bench, join: bool) -> tuple[dict[str, str], Bench]:
    """Fresh topics, and the bench whose consumers join the receivers topic when ``join``."""
    topics = bench.topics()
    if not join:
        return topics, bench
    topics["receivers"] = f"bench.rx.{topics['input'].rsplit('.', 1)[-1]}"
    bench.create_topics([topics["receivers"]])
    env = {
        **bench.env,
        "HEIMDALL_JOIN__ENABLED": "true",
        "HEIMDALL_JOIN__TOPIC": topics["receivers"],
        "HEIMDALL_JOIN__WINDOW_MS": str(WINDOW_MS),
    }
    return topics, Bench(env, bench.model_uri, bench.log_dir)


def backlog_run(bench: Bench, pool: list[IqCapture], count: int, *, per_receiver: bool) -> dict[str, Any]:
    """Throughput over a pre-filled backlog, whole or per receiver."""
    topics, runner = _runner(bench, per_receiver)
    if per_receiver:
        produce_parts(runner, topics["receivers"], pool, count, None, expected=True)
    else:
        runner.produce(topics["input"], pool, count, None)
    proc = runner.start_consumer(topics, 32, _free_port())
    watch = ProcessWatch(proc.pid)
    results = read_results(
        runner.bootstrap, topics["output"], count, 60 + count / 10, lambda: proc.poll() is None
    )
    run = summarise(results, watch, None, count)
    stop_process(proc, watch)
    return {"throughput": run.throughput, "results": run.results, "p99_ms": run.latency_ms["p99"]}


def paced_run(
    bench: Bench, pool: list[IqCapture], rate: float, seconds: float, *, per_receiver: bool
) -> dict[str, Any]:
    """Latency at a paced load; per receiver, sets close on their window."""
    count = int(rate * seconds)
    topics, runner = _runner(bench, per_receiver)
    with contextlib.closing(open_reader(runner.bootstrap, topics["output"])) as reader:
        proc = runner.start_consumer(topics, 32, _free_port())
        watch = ProcessWatch(proc.pid)
        try:
            runner.wait_assigned(f"bench-{topics['input']}", PARTITIONS * (2 if per_receiver else 1), proc)
            if per_receiver:
                args: tuple[Any, ...] = (runner, topics["receivers"], pool, count, rate)
                offer = threading.Thread(target=lambda: produce_parts(*args, expected=False))
            else:
                offer = threading.Thread(
                    target=runner.produce,
                    args=(topics["input"], pool, count, rate),
                    kwargs={"id_prefix": "j"},
                )
            offer.start()
            results = read_seen(reader, count, 90 + seconds * 2, lambda: proc.poll() is None)
            offer.join()
        finally:
            stop_process(proc, watch)
    cut = count - int(rate * (WINDOW_MS / 1000 + 1))  # the tail closes by idleness, not event time
    kept = [r.latency_ms for r in results if int(r.capture_id.rsplit("-", 1)[-1]) < cut]
    latencies = np.array(kept) if kept else np.array([np.nan])
    out = {
        "results": len(results),
        "counted": len(kept),
        "p50_ms": float(np.percentile(latencies, 50)),
        "p99_ms": float(np.percentile(latencies, 99)),
    }
    if per_receiver:
        beyond = latencies - WINDOW_MS
        out.update(
            beyond_window_p50_ms=float(np.percentile(beyond, 50)),
            beyond_window_p99_ms=float(np.percentile(beyond, 99)),
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backlog", type=int, default=600, help="transmissions in each backlog")
    parser.add_argument("--rate", type=float, default=10.0, help="transmissions per second of the paced load")
    parser.add_argument("--seconds", type=float, default=20.0, help="duration of the paced load")
    parser.add_argument("--rounds", type=int, default=2, help="backlog pairs, in alternating order (median)")
    parser.add_argument("--quick", action="store_true", help="smaller runs, for a smoke check")
    args = parser.parse_args()
    if args.quick:
        args.backlog, args.seconds, args.rounds = 200, 10.0, 1
    env = _stack_env()
    work = Path(tempfile.mkdtemp(prefix="heimdall-bench-join-"))
    print(f"logs of the consumers under test: {work}", flush=True)
    workload = _features_model(env, work)
    pool = [capture_codec().decode(v) for v in encoded_pool(64)]
    bench = Bench(env, workload.model_uri, work)
    # Alternating which path goes first, so a machine getting busier or quieter favours neither.
    rounds: list[dict[str, Any]] = []
    for index in range(args.rounds):
        order = (False, True) if index % 2 == 0 else (True, False)
        runs = {p: backlog_run(bench, pool, args.backlog, per_receiver=p) for p in order}
        rounds.append({"whole": runs[False], "per_receiver": runs[True]})
    ratios = [
        r["per_receiver"]["throughput"] / r["whole"]["throughput"] for r in rounds if r["whole"]["throughput"]
    ]
    whole = {"throughput": float(np.median([r["whole"]["throughput"] for r in rounds]))}
    parts = {"throughput": float(np.median([r["per_receiver"]["throughput"] for r in rounds]))}
    paced_whole = paced_run(bench, pool, args.rate, args.seconds, per_receiver=False)
    paced_parts = paced_run(bench, pool, args.rate, args.seconds, per_receiver=True)
    figures = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "model_uri": workload.model_uri,
        "window_ms": WINDOW_MS,
        "backlog": {"transmissions": args.backlog, "rounds": rounds, "ratios": ratios},
        "throughput_ratio": float(np.median(ratios)) if ratios else float("nan"),
        "paced": {
            "rate": args.rate,
            "seconds": args.seconds,
            "whole": paced_whole,
            "per_receiver": paced_parts,
        },
    }
    added = (paced_parts.get("beyond_window_p50_ms", np.nan), paced_parts.get("beyond_window_p99_ms", np.nan))
    print(
        f"throughput per receiver / whole: {figures['throughput_ratio']:.2f} "
        f"(median of {len(ratios)} pairs {[round(r, 2) for r in ratios]}; {parts['throughput']:.0f} vs "
        f"{whole['throughput']:.0f} sets/s over {args.backlog})\n"
        f"paced {args.rate:g}/s: the join adds p50 {added[0]:.0f} ms, p99 {added[1]:.0f} ms beyond the "
        f"{WINDOW_MS} ms window (whole captures at the same rate: p99 {paced_whole['p99_ms']:.0f} ms)"
    )
    out = work / "quick.json" if args.quick else result_path("-join")
    out.write_text(json.dumps(figures, indent=2, default=float))
    print(f"recorded {out}")


if __name__ == "__main__":
    main()
