"""Where ``heimdall-stream run``'s memory goes: RSS per start-up step and per setting, one run.

    python -m bench.memory                       # both workloads, the default settings and variants
    python -m bench.memory --workload W1 --backlog 600

Two parts, both on the local stack (started if needed):

* **start-up steps**: a child process imports what ``heimdall-stream run`` imports, one
  module group at a time, then loads the model, printing its RSS after each step: what each
  import and the model (onnxruntime session, its warm-up run) cost before a
  single capture arrives;
* **under load**: ``heimdall-stream run`` consumes the same pre-filled backlog once per variant
  (the defaults, then one setting changed at a time: jemalloc, tuned and with its own
  defaults, where it is installed; glibc with a fixed mmap threshold, trimming or its own arena
  count; onnxruntime's arena, one onnxruntime run per batch, one worker), recording the RSS once
  ready (model loaded, before the first capture), the peak (the kernel's high-water mark) and
  the throughput.  The difference between ready and peak is what the flow of captures costs
  (prefetch, batches in flight, allocator fragmentation).

Only RSS is meant to be compared here; throughputs are printed to show a setting does not cost
speed, but on a shared machine they are noisy (compare them within one run only).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

from bench import compare
from bench.compute import encoded_pool
from bench.run import _features_model, _free_port, _iq_model, _stack_env
from bench.stream import Bench, ProcessWatch, read_results, stop_process, summarise
from heimdall_stream.stream.preload import find_library
from heimdall_stream.wire.codec import capture_codec

# What `heimdall-stream run` imports, in the order it needs it, then the model.
STEPS = (
    ("python", ()),
    ("numpy, scipy.fft", ("numpy", "scipy.fft")),
    ("confluent_kafka", ("confluent_kafka",)),
    ("onnxruntime", ("onnxruntime",)),
    ("pydantic, redis, prometheus", ("pydantic", "pydantic_settings", "redis", "prometheus_client")),
    ("heimdall_stream.cli", ("heimdall_stream.cli",)),
)
STEP_SCRIPT = """
import importlib, json, sys
from pathlib import Path

def rss_mb():
    for line in Path('/proc/self/status').read_text().splitlines():
        if line.startswith('VmRSS:'):
            return int(line.split()[1]) / 1024

steps = json.loads(sys.argv[1])
for label, modules in steps:
    for module in modules:
        importlib.import_module(module)
    print(json.dumps([label, rss_mb()]), flush=True)
from heimdall_stream.config import Settings
from heimdall_stream.models.loading import load_version
from heimdall_stream.models.registry import ModelRegistry
settings = Settings()
registry = ModelRegistry(settings.mlflow.tracking_uri, settings.mlflow.cache_dir)
load_version(registry, settings.model.uri, settings)
print(json.dumps(["model fetched, loaded, warmed up", rss_mb()]), flush=True)
print(json.dumps(["(mlflow imported by then)", 'mlflow' in sys.modules]), flush=True)
"""

VARIANTS: dict[str, dict[str, str]] = {
    "defaults": {},
    "jemalloc": {"HEIMDALL_MEMORY__ALLOCATOR": "jemalloc"},
    "jemalloc, its own defaults": {"HEIMDALL_MEMORY__ALLOCATOR": "jemalloc", "MALLOC_CONF": ""},
    "mmap threshold 1 MB": {"HEIMDALL_MEMORY__MALLOC_MMAP_THRESHOLD_KBYTES": "1024"},
    "trim every 100 ms": {"HEIMDALL_MEMORY__TRIM_INTERVAL_MS": "100"},
    "glibc's own arena count": {"HEIMDALL_MEMORY__MALLOC_ARENA_MAX": "0"},
    "ORT arena on": {"HEIMDALL_MODEL__CPU_MEM_ARENA": "true"},
    "whole batch per run": {"HEIMDALL_MODEL__MAX_RUN_INPUT_KBYTES": "0"},
    "runs of 4 MiB (7 IQ captures)": {"HEIMDALL_MODEL__MAX_RUN_INPUT_KBYTES": "4096"},
    "1 worker": {"HEIMDALL_BATCHING__WORKERS": "1"},
}


def startup_steps(bench: Bench, model_uri: str) -> list[tuple[str, float]]:
    """RSS (MB) after each start-up step, in a fresh interpreter like the consumer's."""
    env = bench.child_env()
    env["HEIMDALL_MODEL__URI"] = model_uri
    out = subprocess.run(
        [sys.executable, "-c", STEP_SCRIPT, json.dumps(STEPS)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).parents[1],
    )
    return [tuple(json.loads(line)) for line in out.stdout.splitlines() if line.startswith("[")]


def under_load(
    bench: Bench, backlog_topic: str, count: int, model_uri: str, env: dict[str, str]
) -> dict[str, Any]:
    """Ready and peak RSS of one ``heimdall-stream run`` over the backlog, with ``env`` set."""
    tag = uuid.uuid4().hex[:6]
    output = f"bench.mem.out.{tag}"
    bench.create_topics([output])
    bench.create_topics([f"{output}.dlq"], 1)
    topics = {"input": backlog_topic, "output": output, "dlq": f"{output}.dlq"}
    saved = dict(bench.env)
    bench.env.update(env)
    try:
        proc = bench.start_consumer(
            topics, compare.HEIMDALL_BATCH, _free_port(), group=f"bench-mem-{tag}", model_uri=model_uri
        )
    finally:
        bench.env.clear()
        bench.env.update(saved)
    watch = ProcessWatch(proc.pid)
    ready_rss = _rss_now(proc.pid)
    results = read_results(bench.bootstrap, output, count, 60 + count / 10, lambda: proc.poll() is None)
    run = summarise(results, watch, None, count)
    stop_process(proc, watch)
    return {
        "ready_rss_mb": ready_rss,
        "peak_rss_mb": run.peak_rss_mb,
        "throughput": run.throughput,
        "results": run.results,
    }


def _rss_now(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1e3
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", choices=["W1", "W2", "both"], default="both")
    parser.add_argument("--backlog", type=int, default=600, help="captures consumed per variant")
    parser.add_argument("--variant", action="append", help="only these variants (repeatable)")
    args = parser.parse_args()
    env = _stack_env()
    work = Path(tempfile.mkdtemp(prefix="heimdall-memory-"))
    print(f"logs: {work}", flush=True)
    makers = {"W1": _features_model, "W2": _iq_model}
    keys = ["W1", "W2"] if args.workload == "both" else [args.workload]
    captures = [capture_codec().decode(v) for v in encoded_pool(32)]
    variants = {k: v for k, v in VARIANTS.items() if not args.variant or k in args.variant}
    if find_library("") is None:  # jemalloc is not installed here: its variants cannot run
        skipped = [k for k, v in variants.items() if v.get("HEIMDALL_MEMORY__ALLOCATOR") == "jemalloc"]
        variants = {k: v for k, v in variants.items() if k not in skipped}
        if skipped:
            print(f"skipped (no libjemalloc.so.2; apt-get install libjemalloc2): {', '.join(skipped)}")
    report: dict[str, Any] = {}
    for key in keys:
        workload = makers[key](env, work)
        bench = Bench(env, workload.model_uri, work)
        steps = startup_steps(bench, workload.model_uri)
        print(f"\n[{key}] start-up ({workload.model_uri})")
        previous = 0.0
        for label, value in steps:
            if isinstance(value, bool):
                print(f"  {label}: {value}")
                continue
            print(f"  {label:40s} {value:7.1f} MB  (+{value - previous:.1f})")
            previous = value
        topic = f"bench.mem.in.{key}.{uuid.uuid4().hex[:6]}"
        bench.create_topics([topic])
        bench.produce(topic, captures, args.backlog, None, id_prefix=key)
        rows = {}
        for name, overrides in variants.items():
            row = under_load(bench, topic, args.backlog, workload.model_uri, overrides)
            rows[name] = row
            print(
                f"  {name:28s} ready {row['ready_rss_mb']:6.0f} MB  peak {row['peak_rss_mb']:6.0f} MB  "
                f"{row['throughput']:6.0f} captures/s  ({row['results']} results)",
                flush=True,
            )
        report[key] = {"startup": steps, "under_load": rows}
    (work / "memory.json").write_text(json.dumps(report, indent=2))
    print(f"\nrecorded {work / 'memory.json'}")


if __name__ == "__main__":
    main()
