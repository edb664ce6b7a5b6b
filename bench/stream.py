"""End-to-end benchmarks through real Kafka: sustained throughput, latency under load, RSS.

A consumer runs as a child process (``heimdall-stream run``) on fresh topics; a producer in this
process offers captures re-encoded from a pool (fresh capture ids and ``captured_at``), and a
read_committed reader in this process timestamps every result as it becomes visible.  End-to-end
latency = visible-to-reader time − ``captured_at``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from heimdall_stream.wire.codec import capture_codec, localization_codec
from heimdall_stream.wire.messages import IqCapture


@dataclass
class StreamRun:
    """Figures of one offered load."""

    offered_rate: float | None
    captures: int
    throughput: float
    latency_ms: dict[str, float]
    peak_rss_mb: float
    results: int
    extra: dict[str, Any] = field(default_factory=dict)


class Bench:
    """Topics, a consumer process and a reader for one benchmark run."""

    def __init__(self, env: dict[str, str], model_uri: str, log_dir: Path) -> None:
        self.env = env
        self.bootstrap = env["HEIMDALL_KAFKA__BOOTSTRAP_SERVERS"]
        self.model_uri = model_uri
        self.log_dir = log_dir

    def topics(self, partitions: int = 6) -> dict[str, str]:
        tag = uuid.uuid4().hex[:8]
        names = {"input": f"bench.in.{tag}", "output": f"bench.out.{tag}", "dlq": f"bench.dlq.{tag}"}
        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        futures = admin.create_topics(
            [
                NewTopic(n, num_partitions=partitions if k != "dlq" else 1, replication_factor=1)
                for k, n in names.items()
            ]
        )
        for future in futures.values():
            future.result(30)
        return names

    def start_consumer(self, topics: dict[str, str], batch_size: int, port: int) -> subprocess.Popen[bytes]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HEIMDALL_", "MLFLOW_"))}
        env.update(self.env)
        env.update(
            {
                "HEIMDALL_KAFKA__INPUT_TOPIC": topics["input"],
                "HEIMDALL_KAFKA__OUTPUT_TOPIC": topics["output"],
                "HEIMDALL_KAFKA__DLQ_TOPIC": topics["dlq"],
                "HEIMDALL_KAFKA__GROUP_ID": f"bench-{topics['input']}",
                "HEIMDALL_REDIS__KEY_PREFIX": f"bench:{topics['input']}:",
                "HEIMDALL_MODEL__URI": self.model_uri,
                "HEIMDALL_BATCHING__MAX_BATCH_SIZE": str(batch_size),
                "HEIMDALL_METRICS__PORT": str(port),
                "HEIMDALL_METRICS__HOST": "127.0.0.1",
                "HEIMDALL_INSTANCE_ID": f"bench-{batch_size}",
                # No control topic on these fresh topics: the benchmark serves one fixed model.
                "HEIMDALL_MODEL__CONTROL_ENABLED": "false",
            }
        )
        log = (self.log_dir / f"consumer-{topics['input']}.log").open("ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "heimdall_stream.cli", "run"], env=env, stdout=log, stderr=log
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as resp:
                    if resp.status == 200:
                        return proc
            except OSError:
                time.sleep(0.3)
        proc.kill()
        raise RuntimeError("bench consumer did not become ready")

    def produce(self, topic: str, pool: list[IqCapture], count: int, rate: float | None) -> None:
        producer = Producer(
            {
                "bootstrap.servers": self.bootstrap,
                "linger.ms": 5,
                "enable.idempotence": True,
                "queue.buffering.max.kbytes": 262_144,
            }
        )
        start = time.monotonic()
        for i in range(count):
            if rate:
                while (delay := start + i / rate - time.monotonic()) > 0:
                    producer.poll(min(delay, 0.02))
            base = pool[i % len(pool)]
            capture = IqCapture(
                f"b-{i}-{uuid.uuid4().hex[:6]}", datetime.now(UTC), base.center_frequency_hz, base.receivers
            )
            value = capture_codec().encode(capture)
            while True:
                try:
                    producer.produce(topic, key=capture.capture_id.encode(), value=value)
                    break
                except BufferError:
                    producer.poll(0.05)
            producer.poll(0)
        producer.flush(120)


def read_results(bootstrap: str, topic: str, expected: int, timeout: float) -> list[tuple[float, float]]:
    """(visible wall time, end-to-end ms) for each result, read_committed."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-reader-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    out: list[tuple[float, float]] = []
    deadline = time.monotonic() + timeout
    try:
        while len(out) < expected and time.monotonic() < deadline:
            for message in consumer.consume(num_messages=500, timeout=0.2):
                if message.error() is not None:
                    continue
                seen = datetime.now(UTC)
                loc = localization_codec().decode(message.value())
                visible_ms = loc.timings.end_to_end_ms + (seen - loc.produced_at).total_seconds() * 1000
                out.append((time.monotonic(), visible_ms))
    finally:
        consumer.close()
    return out


def run_load(
    bench: Bench,
    pool: list[IqCapture],
    *,
    count: int,
    rate: float | None,
    batch_size: int,
    port: int,
    preload: bool,
) -> StreamRun:
    """Offer ``count`` captures at ``rate`` (None = flood) and measure the consumer."""
    topics = bench.topics()
    if preload:  # a flood: everything is waiting before the consumer starts
        bench.produce(topics["input"], pool, count, None)
    proc = bench.start_consumer(topics, batch_size, port)
    rss_peak = 0.0
    stop = threading.Event()

    def sample_rss() -> None:
        nonlocal rss_peak
        process = psutil.Process(proc.pid)
        while not stop.is_set():
            try:
                rss_peak = max(rss_peak, process.memory_info().rss / 1e6)
            except psutil.Error:
                return
            time.sleep(0.2)

    sampler = threading.Thread(target=sample_rss, daemon=True)
    sampler.start()
    producer_thread = None
    if not preload:
        producer_thread = threading.Thread(target=bench.produce, args=(topics["input"], pool, count, rate))
        producer_thread.start()
    results = read_results(bench.bootstrap, topics["output"], count, timeout=60 + count / 20)
    if producer_thread:
        producer_thread.join()
    stop.set()
    proc.send_signal(signal.SIGTERM)
    proc.wait(60)
    times = [t for t, _ in results]
    latencies = np.array([ms for _, ms in results]) if results else np.array([np.nan])
    # Throughput over the middle 90 % of results: ignores start-up and the drain tail.
    lo, hi = int(len(times) * 0.05), max(int(len(times) * 0.95) - 1, 1)
    throughput = (hi - lo) / (times[hi] - times[lo]) if len(times) > 10 and times[hi] > times[lo] else 0.0
    p50, p95, p99 = np.percentile(latencies, [50, 95, 99])
    return StreamRun(rate, count, throughput, {"p50": p50, "p95": p95, "p99": p99}, rss_peak, len(results))
