"""Load test of the predict API: 100 concurrent clients, alone and with the stream busy beside it.

    python -m bench.predict_load                     # both scenarios, recorded in bench/results/
    python -m bench.predict_load --seconds 5 --quick # a smoke run, printed only

Starts the local stack if needed and one ``heimdall-stream run`` child process with the predict
API enabled (the registered features model, as ``bench.run`` finds or trains it).  Each client
(httpx, asyncio) posts one capture at a time to ``POST /predict`` as Avro and posts the next as
soon as it has its answer (a closed loop: latency ≈ clients ÷ throughput).  The clients are
spread over ``--processes`` load-generator processes (one event loop and one httpx client
each): a single Python process cannot feed 100 clients with 280 kB bodies, and measured itself
instead of the server.  Every capture is distinct (``distinct_capture``), so the result cache
never answers for the model.

Two scenarios, in this order, against the same instance:

* **alone**: the stream is idle (nothing on its input topic);
* **beside the stream**: the bench's producer offers ``--stream-rate`` captures/s to the input
  topic during the whole load, and the stream's results over the window are counted.

Figures: requests/s (answers with 200 over the measured window, after ``--warm-up`` seconds),
latency p50/p95/p99 of those, statuses, and the micro-batch sizes the API formed (from its
``heimdall_api_batch_size`` histogram, scraped before and after).  The load generator, the
producer, Kafka, Redis and the instance share the machine's cores: the absolute numbers move
with the machine and whatever else runs on it; nothing asserts on a time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import tempfile
import threading
import time
import urllib.request
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.recorded import result_path
from bench.run import _features_model, _free_port, _stack_env
from bench.stream import Bench, distinct_capture
from heimdall_stream.api.bodies import AVRO_CAPTURE
from heimdall_stream.lab.simulator import IqSimulator
from heimdall_stream.network import load_network
from heimdall_stream.wire.codec import capture_codec

SPAWN_GRACE_S = 10.0  # for the load-generator processes to start (imports, simulated pool)


def scrape(port: int) -> dict[str, float]:
    """Every sample of an instance's /metrics, by its text key (name and labels)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            samples[key] = float(value)
    return samples


def batch_sizes(before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    """Micro-batches formed between two scrapes: count, mean size, and count per size bucket."""

    def delta(key: str) -> float:
        return after.get(key, 0.0) - before.get(key, 0.0)

    count = delta("heimdall_api_batch_size_count")
    buckets, below = {}, 0.0
    for key in sorted(
        (k for k in after if k.startswith("heimdall_api_batch_size_bucket")),
        key=lambda k: float(k.split('le="')[1].split('"')[0].replace("+Inf", "inf")),
    ):
        cumulative = delta(key)
        buckets[key.split('le="')[1].split('"')[0]] = int(cumulative - below)
        below = cumulative
    return {
        "batches": int(count),
        "mean": round(delta("heimdall_api_batch_size_sum") / count, 2) if count else 0.0,
        "per_bucket_le": {le: n for le, n in buckets.items() if n},
    }


async def load(
    base: str, clients: int, window: tuple[float, float, float], seed: int
) -> tuple[list[float], dict[int, int]]:
    """``clients`` closed-loop clients from ``window[0]`` to ``window[2]`` (wall clock, shared by
    the processes); figures from ``window[1]`` on.

    Returns the latencies of the 200 answers and the count of each status, for the requests
    sent and answered within the window.
    """
    sim = IqSimulator(load_network(), seed=seed)
    pool = [sim.generate(i).capture for i in range(8)]
    codec = capture_codec()
    counter = iter(range(10**9))
    tag = uuid.uuid4().hex[:6]
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    begin, measured, end = window
    while (wait := begin - time.time()) > 0:  # every process starts together
        await asyncio.sleep(min(wait, 0.1))

    async def client(http: httpx.AsyncClient) -> None:
        while time.time() < end:
            index = next(counter)
            body = codec.encode(distinct_capture(pool, index, f"load-{tag}-{index}"))
            sent = time.time()
            retry_after = 0.0
            try:
                answer = await http.post("/predict", content=body, headers={"content-type": AVRO_CAPTURE})
                status = answer.status_code
                retry_after = float(answer.headers.get("retry-after", "0"))
            except httpx.HTTPError:
                status = 0  # no answer at all (connection refused, timeout)
            done = time.time()
            if measured <= sent and done <= end:
                statuses[status] = statuses.get(status, 0) + 1
                if status == 200:
                    latencies.append(done - sent)
            if retry_after:
                await asyncio.sleep(retry_after)

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60) as http:
        await asyncio.gather(*(client(http) for _ in range(clients)))
    return latencies, statuses


def client_process(
    base: str, clients: int, window: tuple[float, float, float], seed: int
) -> tuple[list[float], dict[int, int]]:
    """One load-generator process (its own interpreter: one event loop cannot feed 100 clients)."""
    return asyncio.run(load(base, clients, window, seed))


def run_clients(base: str, args: argparse.Namespace) -> dict[str, Any]:
    """``args.clients`` clients spread over ``args.processes`` processes; merged figures."""
    start = time.time() + SPAWN_GRACE_S
    window = (start, start + args.warm_up, start + args.seconds)
    share = [
        args.clients // args.processes + (i < args.clients % args.processes) for i in range(args.processes)
    ]
    context = multiprocessing.get_context("spawn")
    with context.Pool(args.processes) as workers:
        parts = workers.starmap(client_process, [(base, n, window, i) for i, n in enumerate(share)])
    latencies = [x for part, _ in parts for x in part]
    statuses: dict[int, int] = {}
    for _, counts in parts:
        for status, n in counts.items():
            statuses[status] = statuses.get(status, 0) + n
    span = window[2] - window[1]
    ms = np.array(latencies) * 1000.0
    return {
        "clients": args.clients,
        "processes": args.processes,
        "window_s": round(span, 1),
        "answered_per_s": round(len(latencies) / span, 1),
        "latency_ms": {
            q: round(float(np.percentile(ms, p)), 1) if len(ms) else None
            for q, p in (("p50", 50), ("p95", 95), ("p99", 99))
        },
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
    }


def scenario(
    bench: Bench,
    api_port: int,
    metrics_port: int,
    pool: list[Any],
    args: argparse.Namespace,
    *,
    topics: dict[str, str] | None,
) -> dict[str, Any]:
    """One load run; with ``topics``, captures are offered to the stream during it."""
    producer: threading.Thread | None = None
    if topics is not None:
        offered = int(args.stream_rate * (args.seconds + SPAWN_GRACE_S + 2))
        producer = threading.Thread(
            target=bench.produce,
            args=(topics["input"], pool, offered, args.stream_rate, f"s{uuid.uuid4().hex[:4]}"),
            daemon=True,
        )
        producer.start()
    before, scraped_at = scrape(metrics_port), time.monotonic()
    figures = run_clients(f"http://127.0.0.1:{api_port}", args)
    after, elapsed = scrape(metrics_port), time.monotonic() - scraped_at
    figures["batch_sizes"] = batch_sizes(before, after)
    # Server side: from the body read to the answer (the rest of a client's wait is the network
    # stack, uvicorn, and the load generator itself, all on the same cores).
    key = 'heimdall_api_request_duration_seconds_{}{{route="/predict"}}'
    count = after.get(key.format("count"), 0.0) - before.get(key.format("count"), 0.0)
    total = after.get(key.format("sum"), 0.0) - before.get(key.format("sum"), 0.0)
    figures["server_mean_ms"] = round(total / count * 1000.0, 1) if count else None
    figures["load_average_1m"] = round(os.getloadavg()[0], 1)
    if producer is not None:
        results = sum(v for k, v in after.items() if k.startswith("heimdall_results_produced_total")) - sum(
            v for k, v in before.items() if k.startswith("heimdall_results_produced_total")
        )
        figures["stream"] = {
            "offered_per_s": args.stream_rate,
            "results_per_s_during_load": round(results / elapsed, 1),
        }
        producer.join(args.seconds + 120)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument(
        "--processes", type=int, default=4, help="load-generator processes sharing the clients"
    )
    parser.add_argument("--seconds", type=float, default=30.0, help="duration of each scenario")
    parser.add_argument("--warm-up", type=float, default=5.0, help="seconds left out at the start")
    parser.add_argument("--stream-rate", type=float, default=50.0, help="captures/s offered to the stream")
    parser.add_argument("--api-workers", type=int, default=2, help="HEIMDALL_API__WORKERS of the instance")
    parser.add_argument("--quick", action="store_true", help="print only, record nothing")
    args = parser.parse_args()

    env = _stack_env()
    work = Path(tempfile.mkdtemp(prefix="heimdall-predict-load-"))
    print(f"instance log under {work}", flush=True)
    model = _features_model(env, work)
    api_port, metrics_port = _free_port(), _free_port()
    bench = Bench(
        {
            **env,
            "HEIMDALL_API__ENABLED": "true",
            "HEIMDALL_API__HOST": "127.0.0.1",
            "HEIMDALL_API__PORT": str(api_port),
            "HEIMDALL_API__WORKERS": str(args.api_workers),
        },
        model.model_uri,
        work,
    )
    topics = bench.topics()
    proc = bench.start_consumer(topics, 32, metrics_port)
    sim = IqSimulator(load_network(), seed=0)
    pool = [sim.generate(i).capture for i in range(32)]
    try:
        print("alone ...", flush=True)
        alone = scenario(bench, api_port, metrics_port, pool, args, topics=None)
        print(json.dumps(alone), flush=True)
        print("beside the stream ...", flush=True)
        beside = scenario(bench, api_port, metrics_port, pool, args, topics=topics)
        print(json.dumps(beside), flush=True)
    finally:
        proc.terminate()
        proc.wait(60)
    figures = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "note": "one run on a shared, noisy machine (load generator, producer, Kafka, Redis and the "
        "instance on the same cores, other work beside them): compare figures within this run only",
        "model_uri": model.model_uri,
        "api": {"workers": args.api_workers, "max_batch_size": 32, "max_wait_ms": 2.0, "max_queue": 256},
        "alone": alone,
        "beside_stream": beside,
    }
    if args.quick:
        print(json.dumps(figures, indent=2))
        return
    out = result_path("-predict")
    out.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"recorded {out}")


if __name__ == "__main__":
    main()
