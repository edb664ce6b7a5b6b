"""The end-to-end demo on the local stack (``make demo`` / ``heimdall-stream demo``).

Starts Kafka, Redis and MLflow (``deploy/local/stack``), trains and registers the reference model
if the registry has none, starts a consumer, publishes simulated captures (with a few duplicates
and malformed messages), reads the committed results, and prints: how many results, the median
localization error against the simulator's truth, how often the truth falls inside the 95 %
ellipse, latency percentiles, and the dead letters by reason.  It writes every result as a
GeoJSON FeatureCollection (receivers, estimates, ellipses and truth points) that any map tool
opens, and says how to see the same results on the live map (``heimdall-stream map``).  It stops
what it started.  Each phase is announced on stderr as it begins (``console.progress.Steps``: a
bar on a terminal, plain lines elsewhere); the summary goes to stdout.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from confluent_kafka import Consumer, Producer
from prometheus_client.parser import text_string_to_metric_families
from pyproj import Geod

from heimdall_stream.clients import capture_producer_config, reader_config
from heimdall_stream.config import Settings
from heimdall_stream.console.progress import Steps
from heimdall_stream.geojson import receiver_features, truth_feature
from heimdall_stream.lab.arrivals import Arrivals
from heimdall_stream.lab.publisher import SimulationPlan, publish
from heimdall_stream.network import load_network
from heimdall_stream.wire.codec import localization_codec
from heimdall_stream.wire.messages import Localization

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[2]
STACK = REPO / "deploy" / "local" / "stack.py"
GEOD = Geod(ellps="WGS84")


def run_demo(*, count: int, rate: float, output: Path, keep_stack: bool, per_receiver: bool = False) -> int:
    """Run the demo; return the process exit code (per receiver: the consumer joins the parts)."""
    if not STACK.exists():
        log.error("the demo needs a source checkout (deploy/local/stack.py); see README")
        return 2
    steps = Steps()
    steps.start("starting Kafka, Redis and MLflow (deploy/local/stack up)")
    started_stack = _stack("up") == 0
    if not started_stack:
        return 1
    consumer_proc: subprocess.Popen[bytes] | None = None
    try:
        env = {**os.environ, **_stack_env()}
        port = _free_port()
        env.update({"HEIMDALL_METRICS__PORT": str(port), "HEIMDALL_INSTANCE_ID": "demo-consumer"})
        # The consumer's lifecycle lines would bury the demo's own; warnings and errors still show.
        env.setdefault("HEIMDALL_LOG_LEVEL", "WARNING")
        if per_receiver:
            env["HEIMDALL_JOIN__ENABLED"] = "true"
        cli = [sys.executable, "-m", "heimdall_stream.cli"]
        steps.start("training the reference model unless the registry has one")
        subprocess.run([*cli, "train-reference", "--if-absent"], env=env, check=True)
        steps.start("creating topics")
        subprocess.run([*cli, "topics"], env=env, check=True, stdout=subprocess.DEVNULL)
        steps.start("starting the consumer (heimdall-stream run) and waiting until it is ready")
        consumer_proc = subprocess.Popen([*cli, "run"], env=env)
        _wait_ready(port, consumer_proc)
        settings = Settings(**_settings_from(env))
        started = datetime.now(UTC)
        run_id = started.strftime("%Y%m%d%H%M%S")
        steps.start(f"publishing {count} captures at {rate:g}/s", count)
        truth = _publish(settings, count, rate, run_id, steps.advance, per_receiver=per_receiver)
        # Per receiver, a set whose on-time receivers are too few is dead-lettered, not localised.
        wanted = set(truth)
        if per_receiver:
            wanted = {k for k, t in truth.items() if len(t["on_time"]) >= settings.join.min_receivers}
        steps.start("collecting the results", len(wanted))
        results = _collect(settings, wanted, timeout_s=60 + count / max(rate, 1), tick=steps.advance)
        steps.finish()
        metrics = _scrape(port)
        _summarise(results, truth, metrics, output)
        _print_map_hint(settings, started, output, keep_stack)
        return 0 if wanted <= set(results) else 1
    except BaseException:
        steps.fail()
        raise
    finally:
        if consumer_proc is not None:
            steps.start("stopping the consumer")
            consumer_proc.send_signal(signal.SIGTERM)
            consumer_proc.wait(timeout=60)
        if not keep_stack:
            steps.start("stopping the stack")
            _stack("down")
        steps.finish()


def _stack(command: str) -> int:
    return subprocess.run([sys.executable, str(STACK), command], check=False).returncode


def _stack_env() -> dict[str, str]:
    out = subprocess.run([sys.executable, str(STACK), "env"], capture_output=True, text=True, check=True)
    return dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)


def _settings_from(env: dict[str, str]) -> dict[str, Any]:
    return {
        "kafka": {"bootstrap_servers": env["HEIMDALL_KAFKA__BOOTSTRAP_SERVERS"]},
        "redis": {"url": env["HEIMDALL_REDIS__URL"]},
        "mlflow": {"tracking_uri": env["HEIMDALL_MLFLOW__TRACKING_URI"]},
    }


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_ready(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"consumer exited with {proc.returncode} before it was ready")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError("consumer did not become ready")


def _publish(
    settings: Settings,
    count: int,
    rate: float,
    run_id: str,
    tick: Callable[[int], None],
    *,
    per_receiver: bool = False,
) -> dict[str, dict[str, Any]]:
    producer = Producer(capture_producer_config(settings))
    plan = SimulationPlan(
        count=count,
        rate=rate,
        seed=int(run_id[-6:]),
        duplicate_fraction=0.05,
        malformed_fraction=0.02,
        id_prefix=f"demo-{run_id}",
        per_receiver=Arrivals(window_ms=settings.join.window_ms) if per_receiver else None,
    )
    truth: dict[str, dict[str, Any]] = {}

    def remember(out: Any) -> None:
        if out.truth is not None:
            truth[out.truth["capture_id"]] = out.truth
        if out.kind == "valid":
            tick(1)

    topic = settings.join.topic if per_receiver else settings.kafka.input_topic
    stats = publish(producer, topic, load_network(), plan, on_sent=remember)
    print(
        f"published {stats.valid} captures, {stats.duplicates} duplicates, {stats.malformed} malformed "
        f"{dict(sorted(stats.malformed_kinds.items()))}"
    )
    return truth


def _collect(
    settings: Settings, wanted: set[str], timeout_s: float, tick: Callable[[int], None]
) -> dict[str, Localization]:
    consumer = Consumer(reader_config(settings, f"demo-reader-{time.time_ns()}"))
    consumer.subscribe([settings.kafka.output_topic])
    results: dict[str, Localization] = {}
    duplicates = 0
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline and len(results) < len(wanted):
            message = consumer.poll(0.5)
            if message is None or message.error() is not None:
                continue
            loc = localization_codec().decode(message.value() or b"")
            if loc.capture_id in wanted:
                duplicates += loc.capture_id in results
                tick(loc.capture_id not in results)
                results[loc.capture_id] = loc
    finally:
        consumer.close()
    print(f"received {len(results)} of {len(wanted)} results ({duplicates} duplicate results)")
    return results


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return str(resp.read().decode())


def _summarise(
    results: dict[str, Localization], truth: dict[str, dict[str, Any]], metrics: str, output: Path
) -> None:
    errors, inside, latencies = [], 0, []
    features: list[dict[str, Any]] = receiver_features(load_network())
    for capture_id, loc in results.items():
        true = truth[capture_id]
        azimuth, _, distance = GEOD.inv(loc.longitude, loc.latitude, true["longitude"], true["latitude"])
        errors.append(distance)
        latencies.append(loc.timings.end_to_end_ms)
        inside += _inside_ellipse(loc, azimuth, distance)
        features.extend(json.loads(loc.geojson)["features"])  # the estimate and its ellipse
        features.append(truth_feature(capture_id, true["latitude"], true["longitude"], distance))
    output.mkdir(parents=True, exist_ok=True)
    with (output / "truth.jsonl").open("w") as handle:  # for `heimdall-stream map --truth`
        handle.writelines(json.dumps(item) + "\n" for item in truth.values())
    path = output / "localizations.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    if errors:
        p50, p95, p99 = np.percentile(latencies, [50, 95, 99])
        print(
            f"median localization error: {np.median(errors) / 1000:.1f} km "
            f"(p95 {np.percentile(errors, 95) / 1000:.1f} km)"
        )
        print(f"truth inside the 95 % ellipse: {100 * inside / len(errors):.1f} %")
        print(f"end-to-end latency ms: p50 {p50:.0f}  p95 {p95:.0f}  p99 {p99:.0f}")
    letters: dict[str, int] = {}
    dedup = 0
    for family in text_string_to_metric_families(metrics):
        for sample in family.samples:
            if sample.name == "heimdall_dead_letters_total":
                letters[sample.labels["reason"]] = int(sample.value)
            elif sample.name == "heimdall_dedup_hits_total":
                dedup = int(sample.value)
    print("dead letters by reason:", letters or "none")
    print("duplicates suppressed:", dedup)
    print(f"wrote {len(results)} estimates, ellipses and truth points and the receivers to {path}")


def _print_map_hint(settings: Settings, started: datetime, output: Path, keep_stack: bool) -> None:
    """How to see these results on the live map (it needs the stack's Kafka, so --keep-stack)."""
    command = (
        f"heimdall-stream map --from {started.isoformat(timespec='seconds')} --truth {output / 'truth.jsonl'}"
    )
    url = f"http://{settings.map.host}:{settings.map.port}/"
    if keep_stack:
        print(f"live map of these results: `env $(deploy/local/stack env) {command}`, then open {url}")
    else:
        print(
            f"to see these results on the live map, run the demo with --keep-stack, then `{command}` ({url})"
        )


def _inside_ellipse(loc: Localization, azimuth_deg: float, distance_m: float) -> bool:
    """Whether a point at (azimuth, distance) from the centre lies inside the ellipse."""
    ellipse = loc.ellipse
    angle = np.radians(azimuth_deg - ellipse.orientation_deg)
    along, across = distance_m * np.cos(angle), distance_m * np.sin(angle)
    return bool((along / ellipse.semi_major_m) ** 2 + (across / ellipse.semi_minor_m) ** 2 <= 1.0)
