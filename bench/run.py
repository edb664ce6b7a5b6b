"""Run every benchmark on the local stack and record the figures (``make bench``).

Writes ``bench/results/<date>.json`` and prints Markdown tables for the README: the compute-only
figures, heimdall-stream's own throughput and latency curve, and the comparison with
hand-written peers (``bench.compare``) on two workloads, W1 the features model and W2 the IQ
benchmark model.  Everything is measured in one run on one machine, so the ratios (pipeline ÷
compute, batch 32 ÷ batch 1, system ÷ system) are the figures to trust; absolute numbers depend
on the machine and what else it is doing.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.metadata
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import compare
from bench.compute import decode_cost, encoded_pool, features_throughput, model_from_file, pipeline_throughput
from bench.recorded import result_path
from bench.stream import Bench, run_load
from heimdall_stream.config import Settings
from heimdall_stream.models.inference import LoadedModel
from heimdall_stream.wire.codec import capture_codec
from heimdall_stream.wire.messages import IqCapture

REPO = Path(__file__).resolve().parents[1]
STACK = REPO / "deploy" / "local" / "stack.py"
BENCH_FEATURES = "bench_localization"
BENCH_IQ = "bench_localization_iq"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _stack_env() -> dict[str, str]:
    subprocess.run([sys.executable, str(STACK), "up"], check=True)
    out = subprocess.run([sys.executable, str(STACK), "env"], capture_output=True, text=True, check=True)
    return dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)


def _workload(key: str, label: str, uri: str, model_uri: str, work: Path) -> compare.Workload:
    from heimdall_stream.models.registry import ModelRegistry

    fetched = ModelRegistry(uri, work / "models").fetch(model_uri)
    return compare.Workload(key, label, model_uri, fetched.path, fetched.name, fetched.version)


def _features_model(env: dict[str, str], work: Path) -> compare.Workload:
    """W1: the registered champion if there is one, else a small model trained and registered once."""
    from heimdall_stream.lab.reference import champion_exists, register_onnx
    from heimdall_stream.lab.training import train_features_model
    from heimdall_stream.network import load_network

    uri = env["HEIMDALL_MLFLOW__TRACKING_URI"]
    if champion_exists(uri):
        model_uri = "models:/localization_model@champion"
    else:
        if not champion_exists(uri, BENCH_FEATURES):
            print("training a small features model ...", flush=True)
            onnx_bytes, _ = train_features_model(load_network(), n_train=1200, n_calibration=300, n_test=300)
            register_onnx(uri, onnx_bytes, BENCH_FEATURES, "champion", run_name="bench")
        model_uri = f"models:/{BENCH_FEATURES}@champion"
    return _workload("W1", "W1, features model", uri, model_uri, work)


def _iq_model(env: dict[str, str], work: Path) -> compare.Workload:
    """W2: the registered IQ benchmark model if there is one, else one built and registered now."""
    from heimdall_stream.lab.iq_benchmark import build_iq_benchmark_model
    from heimdall_stream.lab.reference import IQ_MODEL, champion_exists, register_onnx
    from heimdall_stream.network import load_network

    uri = env["HEIMDALL_MLFLOW__TRACKING_URI"]
    if champion_exists(uri, IQ_MODEL, "benchmark"):
        model_uri = f"models:/{IQ_MODEL}@benchmark"
    else:
        if not champion_exists(uri, BENCH_IQ, "benchmark"):
            register_onnx(
                uri, build_iq_benchmark_model(load_network()), BENCH_IQ, "benchmark", run_name="bench-iq"
            )
        model_uri = f"models:/{BENCH_IQ}@benchmark"
    return _workload("W2", "W2, IQ model (1-D CNN over raw IQ, benchmark only)", uri, model_uri, work)


def _versions() -> dict[str, str]:
    """Versions of what the figures depend on most (the Kafka client is shared by every system)."""
    import confluent_kafka
    import onnxruntime

    out = {
        "confluent_kafka": importlib.metadata.version("confluent-kafka"),
        "librdkafka": confluent_kafka.libversion()[0],
        "onnxruntime": onnxruntime.__version__,
    }
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        out["quixstreams"] = importlib.metadata.version("quixstreams")
    return out


def _compute(model: LoadedModel, encoded: list[bytes]) -> dict[str, float]:
    """The compute limit on the same cores as the consumer (its default worker count), and on one."""
    workers = Settings().batching.workers
    return {
        "workers": float(workers),
        "batch_32": pipeline_throughput(model, encoded, 32, workers=workers),
        "batch_1": pipeline_throughput(model, encoded, 1, repeats=3, workers=workers),
        "batch_32_one_worker": pipeline_throughput(model, encoded, 32, workers=1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flood", type=int, default=2000, help="captures in the sustained-throughput flood")
    parser.add_argument("--seconds", type=float, default=15.0, help="duration of each offered load")
    parser.add_argument("--backlog", type=int, default=1000, help="captures in the comparison's backlog")
    parser.add_argument("--rounds", type=int, default=3, help="backlog runs per system (median)")
    parser.add_argument(
        "--half-load-seconds", type=float, default=30.0, help="duration of the comparison's half load"
    )
    parser.add_argument("--compare-only", action="store_true", help="only the comparison with the peers")
    parser.add_argument("--quick", action="store_true", help="smaller runs, for a smoke check")
    args = parser.parse_args()
    if args.quick:
        args.flood, args.seconds, args.backlog, args.rounds, args.half_load_seconds = 300, 5.0, 200, 1, 8.0

    env = _stack_env()
    work = Path(tempfile.mkdtemp(prefix="heimdall-bench-"))
    print(f"logs of the consumers under test: {work}", flush=True)
    workloads = [_features_model(env, work), _iq_model(env, work)]
    encoded = encoded_pool(64)
    captures = [capture_codec().decode(v) for v in encoded]

    models = [model_from_file(w.model_path) for w in workloads]
    figures: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "versions": _versions(),
        "model_uri": workloads[0].model_uri,
    }
    bench = Bench(env, workloads[0].model_uri, work)
    if not args.compare_only:
        figures.update(decode=decode_cost(encoded), features_captures_per_s=features_throughput(encoded))
        print("compute-only benchmarks ...", flush=True)
        figures["compute_captures_per_s"] = _compute(models[0], encoded)
        figures.update(
            _heimdall_alone(bench, captures, args.flood, args.seconds, figures["compute_captures_per_s"])
        )
    figures["comparison"] = {
        w.key: compare.compare(
            bench,
            captures,
            w,
            backlog=args.backlog,
            rounds=args.rounds,
            half_load_s=args.half_load_seconds,
            free_port=_free_port,
            compute=functools.partial(_compute, model, encoded),
        )
        for w, model in zip(workloads, models, strict=True)
    }
    first = figures["comparison"][workloads[0].key]
    figures.setdefault("compute_captures_per_s", first["compute_captures_per_s"])
    # A smoke run is no result: it is written beside the consumers' logs, not into bench/results.
    # A comparison alone goes to <date>-compare.json, so it never replaces a whole run's figures
    # (nor, on the same day, an earlier run's: see bench.recorded).
    out = work / "quick.json" if args.quick else result_path("-compare" if args.compare_only else "")
    out.write_text(json.dumps(figures, indent=2, default=float))
    print(table(figures))
    print(f"recorded {out}")


def _heimdall_alone(
    bench: Bench, captures: list[IqCapture], flood: int, seconds: float, compute: dict[str, float]
) -> dict[str, Any]:
    """heimdall-stream's own figures: sustained flood, batch 1, and the latency curve."""
    print("flood (sustained throughput, peak RSS) ...", flush=True)
    sustained = run_load(
        bench, captures, count=flood, rate=None, batch_size=32, port=_free_port(), preload=True
    )
    unbatched = run_load(
        bench, captures, count=max(flood // 4, 100), rate=None, batch_size=1, port=_free_port(), preload=True
    )
    loads = []
    for share in (0.25, 0.5, 0.75, 0.9):
        rate = max(sustained.throughput * share, 1.0)
        print(f"offered load {rate:.0f}/s ...", flush=True)
        loads.append(
            run_load(
                bench,
                captures,
                count=int(rate * seconds),
                rate=rate,
                batch_size=32,
                port=_free_port(),
                preload=False,
            )
        )
    return {
        "sustained": asdict(sustained),
        "unbatched": asdict(unbatched),
        "loads": [asdict(run) for run in loads],
        "ratios": {
            "pipeline_over_compute": sustained.throughput / compute["batch_32"],
            "batch32_over_batch1_pipeline": sustained.throughput / max(unbatched.throughput, 1e-9),
            "batch32_over_batch1_compute": compute["batch_32"] / compute["batch_1"],
        },
    }


def table(figures: dict[str, Any]) -> str:
    """The README tables of a result file."""
    lines = [
        f"Machine: {figures['machine']['cpus']} cores, {figures['machine']['platform']}; {figures['date']}."
    ]
    if "sustained" in figures:
        lines += ["", _own_table(figures)]
    for result in figures.get("comparison", {}).values():
        lines += ["", compare.table(result)]
    return "\n".join(lines)


def _own_table(figures: dict[str, Any]) -> str:
    lines = [
        "| figure | value |",
        "|---|---|",
        f"| decode, ms per 7×10k CI16 capture | {figures['decode']['decode_ms_per_capture']:.2f} |",
        f"| sample-byte copies per decode | {figures['decode']['sample_copies']:.2f} |",
    ]
    for size, rate in figures["features_captures_per_s"].items():
        lines.append(f"| features only, batch {size}, captures/s | {rate:.0f} |")
    compute = figures["compute_captures_per_s"]
    sustained, unbatched, ratios = figures["sustained"], figures["unbatched"], figures["ratios"]
    lines += [
        f"| compute without Kafka, batch 32, captures/s | {compute['batch_32']:.0f} |",
        f"| compute without Kafka, batch 1, captures/s | {compute['batch_1']:.0f} |",
        f"| sustained through Kafka (exactly-once), batch 32, captures/s | {sustained['throughput']:.0f} |",
        f"| sustained through Kafka, batch 1, captures/s | {unbatched['throughput']:.0f} |",
        f"| pipeline ÷ compute | {ratios['pipeline_over_compute']:.2f} |",
        f"| micro-batching speed-up, Kafka (32 vs 1) | {ratios['batch32_over_batch1_pipeline']:.2f}× |",
        f"| peak consumer RSS under a flood of {figures['sustained']['captures']} captures, MB | "
        f"{figures['sustained']['peak_rss_mb']:.0f} |",
    ]
    for run in figures["loads"]:
        lat = run["latency_ms"]
        lines.append(
            f"| end-to-end at {run['offered_rate']:.0f}/s offered: p50 / p95 / p99 ms | "
            f"{lat['p50']:.0f} / {lat['p95']:.0f} / {lat['p99']:.0f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
