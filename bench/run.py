"""Run every benchmark on the local stack and record the figures (``make bench``).

Writes ``bench/results/<date>.json`` and prints a Markdown table for the README.  Everything is
measured in one run on one machine, so the ratios (pipeline ÷ compute, batch 32 ÷ batch 1) are
the figures to trust; absolute numbers depend on the machine and what else it is doing.
"""

from __future__ import annotations

import argparse
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

from bench.compute import decode_cost, encoded_pool, features_throughput, model_from_file, pipeline_throughput
from bench.stream import Bench, run_load
from heimdall_stream.wire.codec import capture_codec

REPO = Path(__file__).resolve().parents[1]
STACK = REPO / "deploy" / "local" / "stack.py"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _stack_env() -> dict[str, str]:
    subprocess.run([sys.executable, str(STACK), "up"], check=True)
    out = subprocess.run([sys.executable, str(STACK), "env"], capture_output=True, text=True, check=True)
    return dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)


def _model(env: dict[str, str], work: Path) -> tuple[str, Path]:
    """The registered champion if there is one, else a small model trained and registered now."""
    from heimdall_stream.lab.reference import champion_exists, register_onnx
    from heimdall_stream.lab.training import train_features_model
    from heimdall_stream.models.registry import ModelRegistry
    from heimdall_stream.network import load_network

    uri = env["HEIMDALL_MLFLOW__TRACKING_URI"]
    if champion_exists(uri):
        model_uri = "models:/localization_model@champion"
    else:
        onnx_bytes, _ = train_features_model(load_network(), n_train=1200, n_calibration=300, n_test=300)
        register_onnx(uri, onnx_bytes, "bench_localization", "champion", run_name="bench")
        model_uri = "models:/bench_localization@champion"
    fetched = ModelRegistry(uri, work / "models").fetch(model_uri)
    return model_uri, fetched.path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flood", type=int, default=2000, help="captures in the sustained-throughput flood")
    parser.add_argument("--seconds", type=float, default=15.0, help="duration of each offered load")
    parser.add_argument("--quick", action="store_true", help="smaller runs, for a smoke check")
    args = parser.parse_args()
    flood = 300 if args.quick else args.flood
    seconds = 5.0 if args.quick else args.seconds

    env = _stack_env()
    work = Path(tempfile.mkdtemp(prefix="heimdall-bench-"))
    model_uri, model_path = _model(env, work)
    model = model_from_file(model_path)
    encoded = encoded_pool(64)
    captures = [capture_codec().decode(v) for v in encoded]

    print("compute-only benchmarks ...", flush=True)
    figures: dict[str, object] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "model_uri": model_uri,
        "decode": decode_cost(encoded),
        "features_captures_per_s": features_throughput(encoded),
        "compute_captures_per_s": {
            "batch_32": pipeline_throughput(model, encoded, 32),
            "batch_1": pipeline_throughput(model, encoded, 1, repeats=3),
        },
    }
    bench = Bench(env, model_uri, work)
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
    compute = figures["compute_captures_per_s"]["batch_32"]  # type: ignore[index]
    figures.update(
        {
            "sustained": asdict(sustained),
            "unbatched": asdict(unbatched),
            "loads": [asdict(run) for run in loads],
            "ratios": {
                "pipeline_over_compute": sustained.throughput / compute,
                "batch32_over_batch1_pipeline": sustained.throughput / max(unbatched.throughput, 1e-9),
                "batch32_over_batch1_compute": compute / figures["compute_captures_per_s"]["batch_1"],  # type: ignore[index]
            },
        }
    )
    out = REPO / "bench" / "results" / f"{datetime.now(UTC):%Y-%m-%d}.json"
    out.write_text(json.dumps(figures, indent=2, default=float))
    print(table(figures))
    print(f"recorded {out}")


def table(figures: dict) -> str:
    """The README table of a result file."""
    lines = [
        f"Machine: {figures['machine']['cpus']} cores, {figures['machine']['platform']}; {figures['date']}.",
        "",
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
