"""End-to-end benchmarks through real Kafka: sustained throughput, latency under load, CPU, RSS.

A consumer runs as a child process (``heimdall-stream run``, or a peer from ``bench.peers``) on
fresh topics; a producer in this process offers captures built from a pool, and a
read_committed reader in this process timestamps every result as it becomes visible.
End-to-end latency = visible-to-reader time − ``captured_at``.

Every offered capture is distinct: the pool capture's first sample of each receiver is
overwritten with the capture's sequence number, so no two captures prepare the same model
input and the consumer's result cache never answers for the model.  A capture's content and id
depend only on its sequence number and the pool, so runs that offer the same count offer the
same captures (only ``captured_at``, the offer time, differs).
"""

from __future__ import annotations

import atexit
import dataclasses
import os
import random
import signal
import struct
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from confluent_kafka import Consumer, ConsumerGroupState, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from heimdall_stream.retry import Backoff, retry_call
from heimdall_stream.wire.codec import capture_codec, localization_codec
from heimdall_stream.wire.messages import IqCapture, SampleFormat

PARTITIONS = 6
SAMPLE_EVERY_S = 0.1
READER_WARM_UP_S = 0.5
WARM_UP_CAPTURES = 10
WARM_UP_FIRST_STAMP = 1 << 20  # distinct_capture stamps far beyond any timed capture's (< 2**30)
_NO_LEADER_YET = (KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE)


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


def distinct_capture(pool: list[IqCapture], index: int, capture_id: str) -> IqCapture:
    """Capture ``index`` of a run: pool content made unique by its first sample, offered now."""
    base = pool[index % len(pool)]
    stamp = index // len(pool) + 1  # unique for this base; bases differ in their other samples
    receivers = []
    for rx in base.receivers:
        first = (
            struct.pack("<hh", stamp % 32768, stamp // 32768)
            if rx.sample_format is SampleFormat.CI16
            else struct.pack("<ff", stamp * 1e-4, 0.0)
        )
        receivers.append(dataclasses.replace(rx, samples=first + rx.samples[len(first) :]))
    return IqCapture(capture_id, datetime.now(UTC), base.center_frequency_hz, tuple(receivers))


class ProcessWatch:
    """Samples a process's RSS and CPU seconds (its children included) in a background thread."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples: list[tuple[float, float, float]] = []  # (monotonic s, cpu s, rss MB)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        process = psutil.Process(self.pid)
        while not self._stop.is_set():
            try:
                procs = [process, *process.children(recursive=True)]
                cpu = sum(sum(p.cpu_times()[:2]) for p in procs)  # user + system
                rss = sum(p.memory_info().rss for p in procs) / 1e6
            except psutil.Error:
                return
            self.samples.append((time.monotonic(), cpu, rss))
            time.sleep(SAMPLE_EVERY_S)

    def stop(self) -> None:
        """Stop sampling."""
        self._stop.set()
        self._thread.join()

    @property
    def peak_rss_mb(self) -> float:
        """Peak RSS: the kernel's high-water mark where it exposes one, else the sampled peak."""
        sampled = max((s[2] for s in self.samples), default=0.0)
        try:
            status = Path(f"/proc/{self.pid}/status").read_text()
        except OSError:
            return sampled
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                return max(sampled, int(line.split()[1]) / 1e3)
        return sampled

    def cpu_seconds(self, start: float, end: float) -> float:
        """CPU seconds the process used between two monotonic times (interpolated samples)."""
        if len(self.samples) < 2:
            return float("nan")
        times = [s[0] for s in self.samples]
        cpus = [s[1] for s in self.samples]
        return float(np.interp(end, times, cpus) - np.interp(start, times, cpus))


# Every topic a benchmark creates in this process.  A comparison writes 1-2 GB of captures per
# workload; kept, they filled the disk after a few dozen runs (the local stack retains 24 h, but a
# partition under one 64 MB segment keeps its active segment for the 7 days of log.roll.hours).
_CREATED: set[str] = set()


def _delete_created_topics(admin_config: dict[str, str | int | float | bool]) -> None:
    """Delete the topics this process created (at a normal exit or Ctrl-C, not on SIGTERM).

    Every Bench of a process reads the same stack's bootstrap, so one admin configuration serves.
    A broker already gone costs at most about 15 s and a printed line.
    """
    names = sorted(_CREATED)
    if not names:
        return
    try:
        admin = AdminClient(admin_config)  # held: a client collected meanwhile fails its futures
        futures = admin.delete_topics(names, operation_timeout=10, request_timeout=10)
        for future in futures.values():
            future.result(15)
    except Exception as exc:  # at exit: say so, never raise
        print(f"could not delete {len(names)} benchmark topics: {exc}", file=sys.stderr)
    _CREATED.clear()


class Bench:
    """Topics, a consumer process and a reader for one benchmark run."""

    def __init__(self, env: dict[str, str], model_uri: str, log_dir: Path) -> None:
        self.env = env
        self.bootstrap = env["HEIMDALL_KAFKA__BOOTSTRAP_SERVERS"]
        self.model_uri = model_uri
        self.log_dir = log_dir
        # librdkafka's notices (level 6) about short-lived admin clients are noise here.
        self.admin_config: dict[str, str | int | float | bool] = {
            "bootstrap.servers": self.bootstrap,
            "log_level": 4,
        }
        self._warmup_topic: str | None = None

    def create_topics(self, names: list[str], partitions: int = PARTITIONS) -> None:
        """Create fresh topics (deleted when this process exits: ``_delete_created_topics``)."""
        admin = AdminClient(self.admin_config)
        if not _CREATED:
            atexit.register(_delete_created_topics, dict(self.admin_config))
        _CREATED.update(names)
        futures = admin.create_topics(
            [NewTopic(n, num_partitions=partitions, replication_factor=1) for n in names]
        )
        for future in futures.values():
            future.result(30)

    def topics(self, partitions: int = PARTITIONS) -> dict[str, str]:
        """Fresh input, output and dead-letter topics."""
        tag = uuid.uuid4().hex[:8]
        names = {"input": f"bench.in.{tag}", "output": f"bench.out.{tag}", "dlq": f"bench.dlq.{tag}"}
        self.create_topics([names["input"], names["output"]], partitions)
        self.create_topics([names["dlq"]], 1)
        return names

    def child_env(self) -> dict[str, str]:
        """This process's environment with the stack's, for a consumer child process."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HEIMDALL_", "MLFLOW_"))}
        env.update(self.env)
        return env

    def start_consumer(
        self,
        topics: dict[str, str],
        batch_size: int,
        port: int,
        *,
        group: str | None = None,
        model_uri: str | None = None,
        settings: dict[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        """``heimdall-stream run`` on ``topics`` (exactly-once unless ``settings`` say otherwise).

        Returns once /readyz answers.
        """
        group = group or f"bench-{topics['input']}"
        env = self.child_env()
        env.update(
            {
                "HEIMDALL_KAFKA__INPUT_TOPIC": topics["input"],
                "HEIMDALL_KAFKA__OUTPUT_TOPIC": topics["output"],
                "HEIMDALL_KAFKA__DLQ_TOPIC": topics["dlq"],
                "HEIMDALL_KAFKA__GROUP_ID": group,
                "HEIMDALL_REDIS__KEY_PREFIX": f"bench:{group}:",
                "HEIMDALL_MODEL__URI": model_uri or self.model_uri,
                "HEIMDALL_BATCHING__MAX_BATCH_SIZE": str(batch_size),
                "HEIMDALL_METRICS__PORT": str(port),
                "HEIMDALL_METRICS__HOST": "127.0.0.1",
                "HEIMDALL_INSTANCE_ID": f"bench-{batch_size}",
                # No control topic on these fresh topics: the benchmark serves one fixed model.
                "HEIMDALL_MODEL__CONTROL_ENABLED": "false",
                **(settings or {}),
            }
        )
        proc = self.spawn([sys.executable, "-m", "heimdall_stream.cli", "run"], env, group)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as resp:
                    if resp.status == 200:
                        return proc
            except OSError:
                time.sleep(0.3)
        proc.kill()
        raise RuntimeError(f"bench consumer did not become ready (see {self.log_dir})")

    def spawn(self, argv: list[str], env: dict[str, str], name: str) -> subprocess.Popen[bytes]:
        """A consumer child process, logging to ``<log_dir>/<name>.log``."""
        log = (self.log_dir / f"{name}.log").open("ab")
        return subprocess.Popen(argv, env=env, stdout=log, stderr=log, cwd=Path(__file__).parents[1])

    def load_producer(self, topic: str) -> Producer:
        """The load generator's idempotent producer, warmed up before the first timed offer.

        An idempotent producer holds every message until it has its producer id from the
        broker, and the topic's metadata.  Unwarmed, the first half second of a paced offer
        waited for both: at 100 captures/s that is the slowest 1.5 % of a 60 s run, so every
        system's p99 read about 0.5 s, a figure of the load generator, not of the system.  One
        message to a warm-up topic, acknowledged, and the target's metadata fetched first.
        """
        producer = Producer(
            {
                "bootstrap.servers": self.bootstrap,
                "linger.ms": 5,
                "enable.idempotence": True,
                "queue.buffering.max.kbytes": 262_144,
                "message.max.bytes": 16 * 1024 * 1024,
            }
        )
        if self._warmup_topic is None:
            self._warmup_topic = f"bench.warmup.{uuid.uuid4().hex[:8]}"
            self.create_topics([self._warmup_topic], partitions=1)
        producer.list_topics(topic, timeout=30)
        producer.produce(self._warmup_topic, value=b"warm-up")
        if producer.flush(60) != 0:
            raise RuntimeError("the load producer's warm-up message was not acknowledged in 60 s")
        return producer

    def produce(
        self,
        topic: str,
        pool: list[IqCapture],
        count: int,
        rate: float | None,
        *,
        id_prefix: str = "b",
        first_index: int = 0,
    ) -> None:
        """Offer ``count`` distinct captures, at ``rate`` per second (None: as fast as possible).

        Captures ``first_index`` … ``first_index + count - 1`` of ``distinct_capture``.
        """
        producer = self.load_producer(topic)
        codec = capture_codec()
        start = time.monotonic()
        for i in range(count):
            if rate:
                while (delay := start + i / rate - time.monotonic()) > 0:
                    producer.poll(min(delay, 0.02))
            capture = distinct_capture(pool, first_index + i, f"{id_prefix}-{i:06d}")
            value = codec.encode(capture)
            while True:
                try:
                    producer.produce(topic, key=capture.capture_id.encode(), value=value)
                    break
                except BufferError:
                    producer.poll(0.05)
            producer.poll(0)
        producer.flush(120)

    def wait_assigned(
        self, group: str, partitions: int, proc: subprocess.Popen[bytes], timeout: float = 120.0
    ) -> None:
        """Wait until ``group`` is stable with all ``partitions`` of its input assigned."""
        admin = AdminClient(self.admin_config)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            description = admin.describe_consumer_groups([group])[group].result(10)
            assigned = sum(len(m.assignment.topic_partitions) for m in description.members)
            if description.state == ConsumerGroupState.STABLE and assigned >= partitions:
                return
            time.sleep(0.2)
        proc.kill()
        raise RuntimeError(f"{group}: partitions not assigned (see {self.log_dir})")


@dataclass(frozen=True, slots=True)
class Seen:
    """A result as the reader saw it."""

    at: float  # monotonic seconds when it became visible
    latency_ms: float  # visible time − captured_at
    capture_id: str
    latitude: float
    longitude: float
    batch_size: int  # of the inference batch it came from (lineage)


def open_reader(bootstrap: str, topic: str, group_prefix: str = "bench-reader") -> Consumer:
    """A read_committed consumer of every partition of ``topic``, already fetching.

    Opened before the system under test starts (or at least before the first capture is
    offered): a reader opened alongside the offer spent its
    first ~250 ms looking up metadata and offsets and connecting, and the first ten or so
    results of every system (of 800 at 40/s, so the whole p99) were late by that much.  So the
    partitions are assigned at their explicit start offsets (no offset lookup after this) and
    the reader polls once, which opens its fetch sessions, before it is handed back.
    """
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"{group_prefix}-{uuid.uuid4().hex}",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
        }
    )
    partitions = _partitions(consumer, topic)
    consumer.assign([TopicPartition(topic, p, _first_offset(consumer, topic, p)) for p in partitions])
    first = consumer.poll(READER_WARM_UP_S)  # this starts the fetches
    partition, offset = (None, None) if first is None else (first.partition(), first.offset())
    if partition is not None and offset is not None:  # a result already there: read it again
        consumer.seek(TopicPartition(topic, partition, offset))
    return consumer


def _partitions(consumer: Consumer, topic: str, expected: int = PARTITIONS) -> list[int]:
    """Every partition of a topic, once its metadata lists ``expected`` of them, each with a leader.

    Metadata fetched just after the topic was created can list it without partitions or without
    their leaders yet; a reader assigned from that missed every result of a whole run.
    """

    def listed() -> list[int]:
        meta = consumer.list_topics(topic, timeout=30).topics.get(topic)
        ready = [p for p, part in (meta.partitions.items() if meta else []) if part.leader >= 0]
        if meta is None or meta.error is not None or len(ready) < expected:
            raise KafkaException(KafkaError(KafkaError.LEADER_NOT_AVAILABLE, f"{topic}: {len(ready)} ready"))
        return sorted(ready)

    return retry_call(
        listed,
        attempts=40,  # about 30 s of 0.05 s doubling up to 1 s
        retriable=lambda exc: isinstance(exc, KafkaException),
        backoff=Backoff(0.05, 1.0),
    )


def _first_offset(consumer: Consumer, topic: str, partition: int) -> int:
    """The partition's low watermark, once it has a leader (a topic just created may not yet)."""

    def leaderless(exc: BaseException) -> bool:
        error = exc.args[0] if isinstance(exc, KafkaException) and exc.args else None
        return isinstance(error, KafkaError) and (error.retriable() or error.code() in _NO_LEADER_YET)

    return retry_call(
        lambda: int(consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)[0]),
        attempts=40,  # about 30 s of 0.05 s doubling up to 1 s
        retriable=leaderless,
        backoff=Backoff(0.05, 1.0),
    )


def read_results(
    bootstrap: str,
    topic: str,
    expected: int,
    timeout: float,
    alive: Callable[[], bool] = lambda: True,
) -> list[Seen]:
    """Every result on ``topic``, read by a reader of its own (``open_reader``, ``read_seen``)."""
    reader = open_reader(bootstrap, topic)
    try:
        return read_seen(reader, expected, timeout, alive)
    finally:
        reader.close()


def read_seen(
    reader: Consumer, expected: int, timeout: float, alive: Callable[[], bool] = lambda: True
) -> list[Seen]:
    """Results as ``reader`` (``open_reader``) sees them, timestamped as librdkafka hands them over.

    The reader is assigned every partition (no group join, so nothing waits for a rebalance
    before the first result is timestamped); this returns once ``expected`` results are in, at
    ``timeout``, or when ``alive`` says the consumer under test has died.
    """
    codec = localization_codec()
    out: list[Seen] = []
    deadline = time.monotonic() + timeout
    while len(out) < expected and time.monotonic() < deadline and alive():
        # poll() returns with the first message; consume(n, timeout) would wait out its whole
        # timeout unless n messages came, adding up to that timeout to every latency measured.
        first = reader.poll(0.1)
        if first is None:
            continue
        for message in [first, *reader.consume(num_messages=500, timeout=0)]:
            value = message.value()
            if message.error() is not None or value is None:
                continue
            seen = datetime.now(UTC)
            loc = codec.decode(value)
            visible_ms = loc.timings.end_to_end_ms + (seen - loc.produced_at).total_seconds() * 1000
            out.append(
                Seen(
                    time.monotonic(),
                    visible_ms,
                    loc.capture_id,
                    loc.latitude,
                    loc.longitude,
                    loc.lineage.batch_size,
                )
            )
    return out


def warm_up(
    bench: Bench,
    topic: str,
    pool: list[IqCapture],
    reader: Consumer,
    alive: Callable[[], bool],
    *,
    count: int = WARM_UP_CAPTURES,
) -> None:
    """Offer ``count`` captures and wait for their results, before a timed offer.

    Group "stable" (``Bench.wait_assigned``) is not "fetching": a consumer still looks up its
    start offsets and opens its fetches after that, and the first captures of a timed offer
    waited for it (about 300 ms for the first ten, every system alike, which was the whole p99
    of a 20 s run).  The warm-up captures are distinct from every timed one (and from other
    runs' warm-ups, so no result cache answers for them) and their results are not counted.
    """
    first = (WARM_UP_FIRST_STAMP + random.randrange(1 << 20)) * len(pool)
    tag = uuid.uuid4().hex[:6]
    bench.produce(topic, pool, count, None, id_prefix=f"warm{tag}", first_index=first)
    seen = read_seen(reader, count, 120.0, alive)
    if len(seen) < count:
        raise RuntimeError(f"{len(seen)} of {count} warm-up results within 120 s (see {bench.log_dir})")


Histograms = dict[str, tuple[dict[float, float], float]]  # stage → (cumulative count by bound, sum)


def stage_histograms(port: int) -> Histograms:
    """A running heimdall-stream's ``heimdall_stage_duration_seconds``, as they stand now."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    out: Histograms = {}
    for family in text_string_to_metric_families(text):
        if family.name != "heimdall_stage_duration_seconds":
            continue
        for sample in family.samples:
            cumulative, total = out.get(sample.labels.get("stage", ""), ({}, 0.0))
            if sample.name.endswith("_bucket"):
                cumulative[float(sample.labels["le"])] = sample.value
            elif sample.name.endswith("_sum"):
                total = sample.value
            out[sample.labels.get("stage", "")] = (cumulative, total)
    return out


def stage_latencies(port: int, since: Histograms | None = None) -> dict[str, dict[str, float]]:
    """Per-stage figures from a running heimdall-stream's histograms (those after ``since``).

    For each stage: observations, mean, and p50 / p99 as the upper bound of the histogram bucket
    holding them (so "≤ 0.025" reads "at most 25 ms").  Evidence of where latency goes inside
    the process (broker = message timestamp to consumption, i.e. producer linger, broker append
    and fetch; queue, decode, features, inference, finish, commit_wait, commit).  ``since``
    (taken after a warm-up) is subtracted, so its captures are not in the figures.
    """
    before = since or {}
    out: dict[str, dict[str, float]] = {}
    for stage, (now, now_sum) in stage_histograms(port).items():
        then, then_sum = before.get(stage, ({}, 0.0))
        cumulative = sorted((le, count - then.get(le, 0.0)) for le, count in now.items())
        total = cumulative[-1][1] if cumulative else 0.0
        if total:
            out[stage] = {
                "count": total,
                "mean_ms": (now_sum - then_sum) / total * 1000,
                "p50_le_ms": _bucket_bound(cumulative, 0.5) * 1000,
                "p99_le_ms": _bucket_bound(cumulative, 0.99) * 1000,
            }
    return out


def _bucket_bound(cumulative: list[tuple[float, float]], share: float) -> float:
    """Upper bound of the first bucket holding ``share`` of a cumulative histogram's count."""
    total = cumulative[-1][1]
    return next(le for le, count in cumulative if count >= share * total)


def summarise(results: list[Seen], watch: ProcessWatch, offered: float | None, count: int) -> StreamRun:
    """Throughput and CPU per capture over the middle 90 % of results; latency percentiles.

    The middle 90 % leaves out start-up (model load, group join) and the drain tail.
    """
    times = [r.at for r in results]
    latencies = np.array([r.latency_ms for r in results]) if results else np.array([np.nan])
    lo, hi = int(len(times) * 0.05), max(int(len(times) * 0.95) - 1, 1)
    window = len(times) > 10 and times[hi] > times[lo]
    throughput = (hi - lo) / (times[hi] - times[lo]) if window else 0.0
    cpu = watch.cpu_seconds(times[lo], times[hi]) / (hi - lo) if window else float("nan")
    p50, p95, p99 = np.percentile(latencies, [50, 95, 99])
    return StreamRun(
        offered,
        count,
        throughput,
        {"p50": p50, "p95": p95, "p99": p99},
        watch.peak_rss_mb,
        len(results),
        {
            "cpu_s_per_capture": cpu,
            "median_batch_size": float(np.median([r.batch_size for r in results])) if results else 0.0,
        },
    )


def stop_process(proc: subprocess.Popen[bytes], watch: ProcessWatch) -> None:
    """Stop sampling, then ask the process to stop (SIGTERM), killing it if it does not."""
    watch.stop()
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


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
    """Offer ``count`` captures at ``rate`` (None = flood) to ``heimdall-stream run`` and measure it."""
    topics = bench.topics()
    if preload:  # a flood: everything is waiting before the consumer starts
        bench.produce(topics["input"], pool, count, None)
    reader = open_reader(bench.bootstrap, topics["output"])
    try:
        proc = bench.start_consumer(topics, batch_size, port)
    except BaseException:
        reader.close()
        raise
    watch = ProcessWatch(proc.pid)
    producer_thread = None

    def alive() -> bool:
        return proc.poll() is None

    try:
        if not preload:
            bench.wait_assigned(f"bench-{topics['input']}", PARTITIONS, proc)
            warm_up(bench, topics["input"], pool, reader, alive)
            offer = (topics["input"], pool, count, rate)
            producer_thread = threading.Thread(target=bench.produce, args=offer)
            producer_thread.start()
        results = read_seen(reader, count, 60 + count / 20, alive)
        return summarise(results, watch, rate, count)
    finally:
        reader.close()
        if producer_thread:
            producer_thread.join()
        stop_process(proc, watch)
