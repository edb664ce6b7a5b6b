"""Publish simulated transmissions the way a real SDR network does: each receiver on its own.

Each simulated capture is split into one ``ReceiverCapture`` per receiver, keyed by the
transmission key (the capture id, as a scheduler would hand out, or the frequency + time-slot
key without one).  Every part arrives after its window by its own delay: most within the
join's window (exponential jitter), a fraction ``late`` (after the window closed), and a
fraction never (``missing``, on top of the simulator's offline receivers).  Parts are sent in
arrival order, paced at the plan's rate; everything is deterministic from the seed, and the
truth of each transmission says which receivers were sent on time, late, or not at all.
"""

from __future__ import annotations

import dataclasses
import heapq
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import IO, TYPE_CHECKING, Any

import numpy as np
from confluent_kafka import Producer

from heimdall_stream.join.keys import slot_key
from heimdall_stream.lab.arrivals import Arrivals
from heimdall_stream.lab.simulator import IqSimulator, SimulatedCapture
from heimdall_stream.network import Network
from heimdall_stream.wire.codec import receiver_codec
from heimdall_stream.wire.messages import IqCapture, ReceiverCapture, ReceiverIq

if TYPE_CHECKING:
    from heimdall_stream.lab.publisher import Outgoing, PublishStats, SimulationPlan

NOMINAL_RATE = 50.0  # transmissions per second of event time when the plan sends as fast as it can


@dataclass(frozen=True, order=True)
class TimedPart:
    """One part and when it is due, relative to the start of the run (seconds)."""

    due_s: float
    sequence: int
    key: str = dataclasses.field(compare=False)
    receiver_id: str = dataclasses.field(compare=False)
    value: bytes = dataclasses.field(compare=False)
    late: bool = dataclasses.field(compare=False)


def split(
    capture: IqCapture, at_s: float, arrivals: Arrivals, rng: np.random.Generator, counter: Iterator[int]
) -> tuple[str, list[TimedPart], dict[str, list[str]]]:
    """A capture's parts with their due times, its key, and which receivers are on time, late, missing."""
    key = capture.capture_id
    if not arrivals.scheduled:
        key = slot_key(
            capture.center_frequency_hz,
            capture.captured_at,
            slot_ms=arrivals.slot_ms,
            channel_hz=arrivals.channel_hz,
        )
    fate: dict[str, list[str]] = {"on_time": [], "late": [], "missing": []}
    parts: list[TimedPart] = []
    for receiver in capture.receivers:
        draw = rng.random()
        if draw < arrivals.missing_fraction:
            fate["missing"].append(receiver.receiver_id)
            continue
        late = draw < arrivals.missing_fraction + arrivals.late_fraction
        window_s = arrivals.window_ms / 1000.0
        if late:
            delay = window_s * (1.5 + rng.random())
        else:
            delay = min(rng.exponential(arrivals.jitter_ms / 1000.0), 0.8 * window_s)
        fate["late" if late else "on_time"].append(receiver.receiver_id)
        value = part_value(capture, receiver, key, expected=len(capture.receivers))
        parts.append(TimedPart(at_s + delay, next(counter), key, receiver.receiver_id, value, late))
    return key, parts, fate


def part_value(capture: IqCapture, receiver: ReceiverIq, key: str, *, expected: int | None) -> bytes:
    """The encoded part one receiver of ``capture`` publishes under ``key``."""
    return receiver_codec().encode(
        ReceiverCapture(
            transmission_key=key,
            receiver_id=receiver.receiver_id,
            latitude=receiver.latitude,
            longitude=receiver.longitude,
            window_start=capture.captured_at,
            center_frequency_hz=capture.center_frequency_hz,
            sample_rate_hz=receiver.sample_rate_hz,
            sample_format=receiver.sample_format,
            samples=receiver.samples,
            altitude_m=receiver.altitude_m,
            timestamp_offset_ns=receiver.timestamp_offset_ns,
            expected_receivers=expected,
        )
    )


def publish_parts(
    producer: Producer,
    topic: str,
    network: Network,
    plan: SimulationPlan,
    arrivals: Arrivals,
    *,
    truth_file: IO[str] | None = None,
    on_sent: Callable[[Outgoing], None] | None = None,
) -> PublishStats:
    """Send a plan's transmissions receiver by receiver, in arrival order; wait for delivery."""
    from heimdall_stream.lab.publisher import Outgoing, PublishStats

    stats = PublishStats()
    failures: list[str] = []
    simulator = IqSimulator(network, seed=plan.seed)
    rng = np.random.default_rng(plan.seed + 2)
    pool: list[SimulatedCapture] = [simulator.generate(i) for i in range(plan.pool)]
    spacing = 1.0 / (plan.rate if plan.rate > 0 else NOMINAL_RATE)
    counter = iter(range(1 << 62))
    waiting: list[TimedPart] = []
    started, wall = time.monotonic(), datetime.now(UTC)

    def delivered(error: Any, _message: Any) -> None:
        if error is not None:
            failures.append(str(error))

    def send(part: TimedPart, truth: dict[str, Any] | None, kind: str) -> None:
        if plan.rate > 0:
            while (delay := started + part.due_s - time.monotonic()) > 0:
                producer.poll(min(delay, 0.05))
        while True:
            try:
                producer.produce(topic, key=part.key.encode(), value=part.value, on_delivery=delivered)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
        if on_sent is not None:
            on_sent(Outgoing(part.key.encode(), part.value, truth, kind))

    firsts: dict[str, dict[str, Any]] = {}

    def send_due(until_s: float) -> None:
        while waiting and waiting[0].due_s <= until_s:
            part = heapq.heappop(waiting)
            truth = firsts.pop(part.key, None)
            send(part, truth, "valid" if truth is not None else ("late" if part.late else "part"))
            stats.parts += 1
            stats.late_parts += part.late
            if rng.random() < plan.duplicate_fraction:
                send(part, None, "duplicate")
                stats.duplicates += 1

    for index in range(plan.count):
        at_s = index * spacing
        send_due(at_s)
        sim = pool[index % plan.pool] if pool else simulator.generate(index)
        capture_id = f"{plan.id_prefix}-{plan.seed}-{index}"
        captured_at = wall + timedelta(seconds=at_s)
        capture = dataclasses.replace(sim.capture, capture_id=capture_id, captured_at=captured_at)
        key, parts, fate = split(capture, at_s, arrivals, rng, counter)
        stats.missing_parts += len(fate["missing"])
        truth = {
            "capture_id": key,
            "latitude": sim.transmitter.latitude,
            "longitude": sim.transmitter.longitude,
            "power_dbm": sim.transmitter.power_dbm,
            "frequency_hz": sim.transmitter.frequency_hz,
            **fate,
        }
        stats.valid += 1
        if truth_file is not None:
            truth_file.write(json.dumps(truth) + "\n")
        if parts:
            firsts[key] = truth
        for part in parts:
            heapq.heappush(waiting, part)
    send_due(float("inf"))
    remaining = producer.flush(60)
    if remaining or failures:
        raise RuntimeError(f"{remaining} parts undelivered; errors: {failures[:3]}")
    return stats
