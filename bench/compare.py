"""heimdall-stream against hand-written peers, on the same topic contents, in one run.

Systems (each a separate process with its own consumer group and its own output topic):

* ``heimdall``: ``heimdall-stream run``, exactly-once, micro-batches of up to 32;
* ``heimdall-alo``: the same with ``KAFKA__DELIVERY=at_least_once``, the peers' guarantee (what
  exactly-once costs is the difference between the two rows);
* ``plain``: ``bench.peers.plain_loop``, a confluent-kafka loop, one message at a time, at-least-once;
* ``quix-alo`` / ``quix-eos``: ``bench.peers.quix_app``, Quix Streams, at-least-once / exactly-once.

For each workload (a model), every system:

1. **backlog**: consumes the same pre-filled topic of distinct captures, in several rounds (a
   fresh group each; every other round in reverse system order): medians over the rounds of
   captures/s (middle 90 % of results) and CPU seconds per capture (same window), the highest
   peak RSS;
2. **half load**: consumes a fresh topic to which captures are offered at one rate, the same for
   every system: half the best *peer's* backlog throughput (the load at which the best
   hand-written app is half busy).  Each system's load factor (offered ÷ its own backlog
   throughput) is recorded: above 1 it cannot keep up, and its latency then measures a queue.
   The captures offered are the same for every system (same ids and content).  Beside each
   half-load run, the whole machine's CPU (busy and steal cores, CPU pressure) over the run and
   over the lifetimes of the captures slower than ``SLOW_MS`` (``bench.machine``): whether the
   tail waited for a core that the load generator, the reader or the broker held.

The compute limit of the workload's model, measured through the same ``BatchProcessor`` without
Kafka, is given beside them: measured right before the workload's backlog rounds and again right
after, and the higher of the two is the one the pipeline is divided by (a machine that got busier
or quieter meanwhile then flatters no ratio).  Medians and ratios only: one run on one machine.
"""

from __future__ import annotations

import contextlib
import math
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.floor import broker_floor, floor_line
from bench.machine import MachineWatch
from bench.stream import (
    PARTITIONS,
    Bench,
    Histograms,
    ProcessWatch,
    Seen,
    StreamRun,
    open_reader,
    read_seen,
    stage_histograms,
    stage_latencies,
    stop_process,
    summarise,
    warm_up,
)
from heimdall_stream.wire.messages import IqCapture

HEIMDALL_BATCH = 32
QUIX_COMMIT_INTERVAL_S = 0.1
SLOW_MS = 100.0  # the latency goal's p99 bound: captures slower than this are the tail examined
METRES_PER_DEGREE = 111_195.0  # of latitude, on the mean Earth radius


@dataclass(frozen=True)
class Workload:
    """A model every system serves: its registry URI and the fetched file the peers load."""

    key: str
    label: str
    model_uri: str
    model_path: Path
    model_name: str
    model_version: str


@dataclass(frozen=True)
class System:
    """One system under comparison."""

    key: str
    label: str
    guarantee: str
    peer: str | None = None  # bench.peers module, None for heimdall-stream itself
    extra_args: tuple[str, ...] = ()
    needs: str | None = None  # a module the peer imports (an optional dependency)
    env: tuple[tuple[str, str], ...] = ()  # settings of heimdall-stream's own variants


SYSTEMS = (
    System("heimdall", f"heimdall-stream run (batch ≤ {HEIMDALL_BATCH})", "exactly-once"),
    System(
        "heimdall-alo",
        f"heimdall-stream run (batch ≤ {HEIMDALL_BATCH})",
        "at-least-once",
        env=(("HEIMDALL_KAFKA__DELIVERY", "at_least_once"),),
    ),
    System("plain", "plain confluent-kafka loop", "at-least-once", "bench.peers.plain_loop"),
    System(
        "quix-alo",
        "Quix Streams",
        "at-least-once",
        "bench.peers.quix_app",
        ("--guarantee", "at-least-once", "--commit-interval", str(QUIX_COMMIT_INTERVAL_S)),
        "quixstreams",
    ),
    System(
        "quix-eos",
        "Quix Streams",
        "exactly-once",
        "bench.peers.quix_app",
        ("--guarantee", "exactly-once", "--commit-interval", str(QUIX_COMMIT_INTERVAL_S)),
        "quixstreams",
    ),
)


def peer_python(system: System) -> str:
    """The interpreter a peer runs on: its own venv for peers with dependencies of their own.

    quixstreams pins confluent-kafka, pydantic and pydantic-settings below the project's
    versions; ``make bench`` installs it into ``.venv-peers`` and names that interpreter in
    ``HEIMDALL_BENCH_PEER_PYTHON``, so heimdall-stream keeps its own versions.
    """
    if system.needs:
        return os.environ.get("HEIMDALL_BENCH_PEER_PYTHON", sys.executable)
    return sys.executable


def available(systems: Sequence[System]) -> tuple[list[System], dict[str, str]]:
    """The systems whose dependencies are installed, and why the others are skipped."""
    usable, skipped = [], {}
    for system in systems:
        python = peer_python(system)
        probe = [python, "-c", f"import {system.needs}"]
        found = (
            system.needs is None or subprocess.run(probe, check=False, capture_output=True).returncode == 0
        )
        if found:
            usable.append(system)
        else:
            skipped[system.key] = f"{system.needs} is not installed for {python} (make bench installs it)"
    return usable, skipped


class Runner:
    """Starts a system on given topics and measures one run of it."""

    def __init__(
        self, bench: Bench, workload: Workload, free_port: Callable[[], int], pool: list[IqCapture]
    ) -> None:
        self.bench = bench
        self.workload = workload
        self.pool = pool  # what a paced run's warm-up captures are made from
        self.free_port = free_port
        self.metrics_port = 0  # heimdall-stream's, while it runs

    def start(
        self, system: System, input_topic: str, output_topic: str, group: str
    ) -> subprocess.Popen[bytes]:
        """The system's process, consuming ``input_topic`` as ``group`` into ``output_topic``."""
        bench, workload = self.bench, self.workload
        if system.peer is None:
            dlq = f"{output_topic}.dlq"
            bench.create_topics([dlq], 1)
            topics = {"input": input_topic, "output": output_topic, "dlq": dlq}
            self.metrics_port = self.free_port()
            return bench.start_consumer(
                topics,
                HEIMDALL_BATCH,
                self.metrics_port,
                group=group,
                model_uri=workload.model_uri,
                settings=dict(system.env),
            )
        argv = [
            peer_python(system),
            "-m",
            system.peer,
            *("--bootstrap", bench.bootstrap, "--input", input_topic, "--output", output_topic),
            *("--group", group, "--model", str(workload.model_path)),
            *("--model-name", workload.model_name, "--model-version", workload.model_version),
            *system.extra_args,
        ]
        return bench.spawn(argv, bench.child_env(), group)

    def measure(
        self,
        system: System,
        input_topic: str,
        count: int,
        *,
        offer: Callable[[], None] | None = None,
        rate: float | None = None,
    ) -> tuple[StreamRun, list[Seen]]:
        """Run ``system`` until its ``count`` results are visible; ``offer`` feeds its input live.

        A system that fails to start or dies is recorded as such (``extra["error"]``); the
        comparison goes on with the others.
        """
        tag = uuid.uuid4().hex[:6]
        group = f"bench-{self.workload.key}-{system.key}-{tag}"
        output = f"bench.cmp.out.{self.workload.key}.{system.key}.{tag}"
        self.bench.create_topics([output])
        try:
            run, results = self._run(
                system,
                input_topic=input_topic,
                output=output,
                group=group,
                count=count,
                offer=offer,
                rate=rate,
            )
        except RuntimeError as exc:  # not ready, or its partitions never assigned: it was killed
            run, results = StreamRun(rate, count, 0.0, {}, 0.0, 0, {"cpu_s_per_capture": float("nan")}), []
            run.extra["error"] = str(exc)
        if run.results < count and "error" not in run.extra:
            run.extra["error"] = f"{run.results} of {count} results (see {self.bench.log_dir}/{group}.log)"
        return run, results

    def _run(
        self,
        system: System,
        *,
        input_topic: str,
        output: str,
        group: str,
        count: int,
        offer: Callable[[], None] | None,
        rate: float | None,
    ) -> tuple[StreamRun, list[Seen]]:
        # The reader first: it misses nothing the system writes, and fetches before any offer.
        with contextlib.closing(open_reader(self.bench.bootstrap, output)) as reader:
            proc = self.start(system, input_topic, output, group)
            watch = ProcessWatch(proc.pid)
            feeder = None

            def alive() -> bool:
                return proc.poll() is None

            machine: MachineWatch | None = None
            try:
                stages_before: Histograms | None = None
                if offer is not None:  # latency: offer only once the system owns every partition
                    self.bench.wait_assigned(group, PARTITIONS, proc)
                    warm_up(self.bench, input_topic, self.pool, reader, alive)
                    stages_before = self._stages_now(system)
                    machine = MachineWatch()
                    feeder = threading.Thread(target=offer)
                    feeder.start()
                offered_at = time.monotonic()
                seconds = count / rate if rate else 0.0
                results = read_seen(reader, count, seconds + 60 + count / 10, alive)
                run = summarise(results, watch, rate, count)
                if machine is not None and results:
                    machine.stop()
                    slow = [(r.at - r.latency_ms / 1e3, r.at) for r in results if r.latency_ms > SLOW_MS]
                    run.extra["machine"] = machine.tail(slow, offered_at, results[-1].at)
                if system.peer is None and alive():
                    # Where its latency went, stage by stage, from its own histograms.
                    try:
                        run.extra["stages"] = stage_latencies(self.metrics_port, since=stages_before)
                    except OSError as exc:
                        run.extra["stages_error"] = str(exc)
                return run, results
            finally:
                if feeder is not None:
                    feeder.join()
                if machine is not None:
                    machine.stop()
                stop_process(proc, watch)

    def _stages_now(self, system: System) -> Histograms | None:
        """heimdall-stream's stage histograms before a timed offer (the warm-up's, to subtract)."""
        if system.peer is not None:
            return None
        try:
            return stage_histograms(self.metrics_port)
        except OSError:
            return None


def compare(
    bench: Bench,
    pool: list[IqCapture],
    workload: Workload,
    *,
    backlog: int,
    rounds: int,
    half_load_s: float,
    free_port: Callable[[], int],
    compute: Callable[[], dict[str, float]],
    systems: Sequence[System] = SYSTEMS,
) -> dict[str, Any]:
    """Every system's backlog and half-load figures for one workload (see the module docstring).

    ``compute`` measures the compute limit; it is called before and after the backlog rounds.
    """
    usable, skipped = available(systems)
    runner = Runner(bench, workload, free_port, pool)
    ids = workload.key  # capture ids W1-000000 ...: the same captures for every system
    backlog_topic = f"bench.cmp.in.{workload.key}.{uuid.uuid4().hex[:6]}"
    bench.create_topics([backlog_topic])
    print(f"[{workload.key}] filling a backlog of {backlog} captures ...", flush=True)
    bench.produce(backlog_topic, pool, backlog, None, id_prefix=ids)
    print(f"[{workload.key}] compute limit, before the backlog rounds ...", flush=True)
    limits = [compute()]
    backlogs: dict[str, list[StreamRun]] = {s.key: [] for s in usable}
    reference: dict[str, tuple[float, float]] = {}
    for round_ in range(rounds):
        # Every other round in reverse order, so a drift of the machine's load favours nobody.
        for system in usable if round_ % 2 == 0 else usable[::-1]:
            print(f"[{workload.key}] backlog, round {round_ + 1}/{rounds}: {system.key} ...", flush=True)
            run, seen = runner.measure(system, backlog_topic, backlog)
            positions = {r.capture_id: (r.latitude, r.longitude) for r in seen}
            reference = reference or positions  # the first results: heimdall-stream's
            run.extra["agreement"] = agreement(reference, positions)
            backlogs[system.key].append(run)
    print(f"[{workload.key}] compute limit, after the backlog rounds ...", flush=True)
    limits.append(compute())
    runs: dict[str, dict[str, Any]] = {
        key: {"backlog": median_run(r), "backlog_rounds": [asdict(x) for x in r]}
        for key, r in backlogs.items()
    }
    peers = [runs[s.key]["backlog"]["throughput"] for s in usable if s.peer is not None]
    best = max(peers, default=0.0) or max(r["backlog"]["throughput"] for r in runs.values())
    rate = max(best / 2, 1.0)
    count = max(int(rate * half_load_s), 20)
    for system in usable:
        print(f"[{workload.key}] half load {rate:.0f}/s: {system.key} ...", flush=True)
        topic = f"bench.cmp.half.{workload.key}.{system.key}.{uuid.uuid4().hex[:6]}"
        bench.create_topics([topic])

        def offer(topic: str = topic) -> None:
            bench.produce(topic, pool, count, rate, id_prefix=ids)

        run, _ = runner.measure(system, topic, count, offer=offer, rate=rate)
        own = runs[system.key]["backlog"]["throughput"]
        run.extra["load_factor"] = rate / own if own else float("inf")
        runs[system.key]["half_load"] = asdict(run)
    print(f"[{workload.key}] half load {rate:.0f}/s: the broker alone ...", flush=True)
    floor = broker_floor(bench, pool, count, rate)
    return {
        "model_uri": workload.model_uri,
        "label": workload.label,
        "compute_captures_per_s": max(limits, key=lambda limit: limit["batch_32"]),
        "compute_measurements": limits,
        "backlog_captures": backlog,
        "backlog_rounds": rounds,
        "offered_rate": rate,
        "offered_rule": "half the best peer's backlog throughput, the same for every system",
        "systems": {s.key: {"label": s.label, "guarantee": s.guarantee, **runs[s.key]} for s in usable},
        "skipped": skipped,
        "broker_floor": floor,
    }


def median_run(runs: Sequence[StreamRun]) -> dict[str, Any]:
    """One backlog figure from its rounds: median throughput and CPU, highest RSS, worst agreement."""
    middle = sorted(runs, key=lambda r: r.throughput)[(len(runs) - 1) // 2]
    errors = [r.extra["error"] for r in runs if "error" in r.extra]
    out = asdict(middle)
    out.update(
        throughput=statistics.median(r.throughput for r in runs),
        peak_rss_mb=max(r.peak_rss_mb for r in runs),
    )
    out["extra"].update(
        cpu_s_per_capture=statistics.median(r.extra["cpu_s_per_capture"] for r in runs),
        agreement=max((r.extra["agreement"] for r in runs), key=lambda a: a["max_position_diff_m"]),
    )
    if errors:
        out["extra"]["error"] = "; ".join(errors)
    return out


def agreement(
    reference: dict[str, tuple[float, float]], positions: dict[str, tuple[float, float]]
) -> dict[str, float]:
    """How far a system's positions are from the reference system's, capture by capture.

    The same captures through the same model must give the same positions, up to the float
    differences of another inference batch size: a check that every system did the same work.
    """
    common = reference.keys() & positions.keys()
    metres = [_metres(reference[c], positions[c]) for c in common]
    return {
        "common_captures": len(common),
        "only_here": len(positions.keys() - reference.keys()),
        "max_position_diff_m": max(metres, default=float("nan")),
    }


def _metres(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Distance between two nearby latitude/longitude points (equirectangular: ample for metres)."""
    east = (b[1] - a[1]) * math.cos(math.radians(a[0]))
    return math.hypot(b[0] - a[0], east) * METRES_PER_DEGREE


def _rounds(count: int) -> str:
    return f"median of {count} rounds" if count > 1 else "one round"


def table(result: dict[str, Any]) -> str:
    """Markdown table of one workload's comparison."""
    compute = result["compute_captures_per_s"]
    lines = [
        f"{result['label']} (`{result['model_uri']}`): backlog of {result['backlog_captures']} captures "
        f"({_rounds(result.get('backlog_rounds', 1))}); "
        f"half load = {result['offered_rate']:.0f} captures/s offered to every system "
        f"({result['offered_rule']}).",
        "",
        "| system | guarantee | backlog captures/s | ÷ compute | CPU ms/capture | cores busy | peak RSS MB "
        "| half load p50 / p99 ms | half load peak RSS MB | load factor | Δ position m |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    notes = [f"{key} skipped: {reason}" for key, reason in result["skipped"].items()]
    for key, run in result["systems"].items():
        backlog, half = run["backlog"], run.get("half_load", {})
        latency = half.get("latency_ms", {})
        notes += [f"{key}: {r['extra']['error']}" for r in (backlog, half) if r and "error" in r["extra"]]
        lines.append(
            f"| {key}: {run['label']} | {run['guarantee']} | {backlog['throughput']:.0f} "
            f"| {backlog['throughput'] / compute['batch_32']:.2f} "
            f"| {backlog['extra']['cpu_s_per_capture'] * 1000:.1f} "
            f"| {backlog['extra']['cpu_s_per_capture'] * backlog['throughput']:.2f} "
            f"| {backlog['peak_rss_mb']:.0f} "
            f"| {latency.get('p50', float('nan')):.0f} / {latency.get('p99', float('nan')):.0f} "
            f"| {half.get('peak_rss_mb', float('nan')):.0f} "
            f"| {half.get('extra', {}).get('load_factor', float('nan')):.2f} "
            f"| {backlog['extra']['agreement']['max_position_diff_m']:.2g} |"
        )
    lines.append(
        f"| compute limit: BatchProcessor, no Kafka, batch 32 (batch 1) | | {compute['batch_32']:.0f} "
        f"({compute['batch_1']:.0f}) | 1.00 | | | | | | | |"
    )
    measured = result.get("compute_measurements", [])
    if "broker_floor" in result:
        lines.append(floor_line(result["broker_floor"]))
    if len(measured) > 1:
        figures = " / ".join(f"{m['batch_32']:.0f}" for m in measured)
        lines += [
            "",
            f"Compute limit before and after the backlog rounds: {figures} captures/s (÷ the higher).",
        ]
    machine = [
        _machine_line(key, run["half_load"]["extra"]["machine"])
        for key, run in result["systems"].items()
        if "machine" in run.get("half_load", {}).get("extra", {})
    ]
    if machine:
        lines += ["", f"The machine during the half load (captures > {SLOW_MS:.0f} ms: the tail):", *machine]
    if notes:
        lines += ["", *(f"- ⚠ {note}" for note in notes)]
    return "\n".join(lines)


def _machine_line(key: str, machine: dict[str, Any]) -> str:
    """One system's half-load run: the machine's CPU over the run, and over its slow captures."""

    def figures(window: dict[str, float] | None) -> str:
        if not window:
            return "not sampled"
        pressure = window.get("cpu_pressure")
        shown = "n/a" if pressure is None else f"{pressure:.2f}"
        busy, steal = window["busy_cores"], window["steal_cores"]
        return f"{busy:.2f} cores busy, steal {steal:.2f}, CPU pressure {shown}"

    line = f"- {key}: {figures(machine['run'])}; {machine['slow_captures']} slow captures"
    if machine.get("slow_median"):
        line += (
            f" in {machine['slow_seconds']} distinct seconds;"
            f" over their lifetimes (median) {figures(machine['slow_median'])}"
        )
    return line
