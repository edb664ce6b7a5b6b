"""Publish simulated captures to Kafka (or a file), with optional duplicates and malformed input.

Captures are stamped ``captured_at = now`` when sent, so end-to-end latency is meaningful.  With
``pool`` > 0 only that many distinct transmissions are simulated and then re-sent under fresh
capture ids, which lets one core offer loads far beyond what the simulator itself can generate.
The truth of every valid capture can be written as JSON lines for later scoring, and published
as ``GroundTruth`` records for a share of them (``TruthPlan``: the known beacons of a real
network, for ``heimdall-stream calibrate``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import numpy as np
from confluent_kafka import Producer

from heimdall_stream.lab.arrivals import Arrivals
from heimdall_stream.lab.faults import FAULTS
from heimdall_stream.lab.per_receiver import publish_parts
from heimdall_stream.lab.simulator import IqSimulator, SimulatedCapture
from heimdall_stream.network import Network
from heimdall_stream.wire.codec import capture_codec, ground_truth_codec
from heimdall_stream.wire.messages import GroundTruth


@dataclass(frozen=True)
class SimulationPlan:
    """What to send."""

    count: int
    rate: float = 0.0  # captures per second; 0 = as fast as possible
    seed: int = 0
    duplicate_fraction: float = 0.0
    malformed_fraction: float = 0.0
    pool: int = 0
    id_prefix: str = "cap"
    per_receiver: Arrivals | None = None  # set: each receiver publishes its part on its own


@dataclass(frozen=True)
class TruthPlan:
    """Publish the true position of a share of the valid captures to a ground-truth topic."""

    topic: str
    fraction: float  # of valid captures, chosen by a hash of the capture id (the same on a re-run)
    source: str = "simulator"


@dataclass
class PublishStats:
    """What was sent."""

    valid: int = 0
    duplicates: int = 0
    malformed: int = 0
    truths: int = 0
    malformed_kinds: dict[str, int] = dataclasses.field(default_factory=dict)
    parts: int = 0  # per receiver: parts sent, of them late, and receivers that never sent
    late_parts: int = 0
    missing_parts: int = 0

    def parts_summary(self) -> str:
        """What went out per receiver ("" when the captures went whole)."""
        if not self.parts:
            return ""
        return f"; as {self.parts} parts ({self.late_parts} late), {self.missing_parts} never sent"


@dataclass(frozen=True)
class Outgoing:
    """One message to send."""

    key: bytes
    value: bytes
    truth: dict[str, Any] | None
    kind: str  # valid, duplicate, or a fault name


def messages(network: Network, plan: SimulationPlan) -> Iterator[Outgoing]:
    """The message stream of a plan, deterministic but for the send-time timestamps."""
    simulator = IqSimulator(network, seed=plan.seed)
    rng = np.random.default_rng(plan.seed + 1)
    pool: list[SimulatedCapture] = [simulator.generate(i) for i in range(plan.pool)]
    fault_names = sorted(FAULTS)
    for index in range(plan.count):
        sim = pool[index % plan.pool] if pool else simulator.generate(index)
        capture_id = f"{plan.id_prefix}-{plan.seed}-{index}"
        capture = dataclasses.replace(sim.capture, capture_id=capture_id, captured_at=datetime.now(UTC))
        value = capture_codec().encode(capture)
        truth = {
            "capture_id": capture_id,
            "latitude": sim.transmitter.latitude,
            "longitude": sim.transmitter.longitude,
            "power_dbm": sim.transmitter.power_dbm,
            "frequency_hz": sim.transmitter.frequency_hz,
            "captured_at": capture.captured_at.isoformat(),
        }
        yield Outgoing(capture_id.encode(), value, truth, "valid")
        if rng.random() < plan.duplicate_fraction:
            yield Outgoing(capture_id.encode(), value, None, "duplicate")
        if rng.random() < plan.malformed_fraction:
            name = fault_names[int(rng.integers(len(fault_names)))]
            yield Outgoing(f"bad-{capture_id}".encode(), FAULTS[name](capture, rng), None, name)


def publish(
    producer: Producer,
    topic: str,
    network: Network,
    plan: SimulationPlan,
    *,
    truth_file: IO[str] | None = None,
    on_sent: Callable[[Outgoing], None] | None = None,
    truths: TruthPlan | None = None,
) -> PublishStats:
    """Send a plan's messages at its rate; wait for every delivery; return what was sent.

    With ``truths``, the ground truth of that share of the valid captures goes to its topic too.
    """
    if plan.per_receiver is not None:
        return publish_parts(
            producer, topic, network, plan, plan.per_receiver, truth_file=truth_file, on_sent=on_sent
        )
    stats = PublishStats()
    failures: list[tuple[str, Any]] = []  # (topic, KafkaError) of each failed delivery

    def delivered(error: Any, message: Any) -> None:
        if error is not None:
            failures.append((message.topic(), error))

    start = time.monotonic()
    sent_valid = 0
    for out in messages(network, plan):
        if plan.rate > 0 and out.kind == "valid":
            due = start + sent_valid / plan.rate
            # poll() returns early whenever it serves a delivery report: loop until due.
            while (delay := due - time.monotonic()) > 0:
                producer.poll(min(delay, 0.05))
        _produce(producer, topic, out.key, out.value, delivered)
        producer.poll(0)
        _count(stats, out)
        if out.kind == "valid":
            sent_valid += 1
            if truth_file is not None and out.truth is not None:
                truth_file.write(json.dumps(out.truth) + "\n")
            if truths is not None and out.truth is not None and has_ground_truth(out.key, truths.fraction):
                _produce(producer, truths.topic, out.key, ground_truth(out.truth, truths.source), delivered)
                stats.truths += 1
        if on_sent is not None:
            on_sent(out)
    remaining = producer.flush(60)
    if remaining or failures:
        raise DeliveryFailedError(remaining, failures)
    return stats


class DeliveryFailedError(RuntimeError):
    """Messages that were not delivered (``errors``: the topic and KafkaError of each failure)."""

    def __init__(self, remaining: int, errors: list[tuple[str, Any]]) -> None:
        super().__init__(f"{remaining} messages undelivered; errors: {[str(e) for _, e in errors[:3]]}")
        self.errors = errors


def _produce(
    producer: Producer, topic: str, key: bytes, value: bytes, delivered: Callable[..., None]
) -> None:
    """Produce, waiting for room in the producer's queue when it is full."""
    while True:
        try:
            producer.produce(topic, key=key, value=value, on_delivery=delivered)
            return
        except BufferError:
            producer.poll(0.05)


def has_ground_truth(capture_id: bytes, fraction: float) -> bool:
    """Whether a capture is one of the ``fraction`` whose truth is published (sticky by id)."""
    draw = int.from_bytes(hashlib.sha256(capture_id).digest()[:8], "big") / 2.0**64
    return draw < fraction


def ground_truth(truth: dict[str, Any], source: str) -> bytes:
    """The ``GroundTruth`` record of a valid capture's truth (as ``messages`` yields it)."""
    record = GroundTruth(
        capture_id=truth["capture_id"],
        latitude=truth["latitude"],
        longitude=truth["longitude"],
        captured_at=datetime.fromisoformat(truth["captured_at"]),
        source=source,
    )
    return ground_truth_codec().encode(record)


def write_file(path: Path, network: Network, plan: SimulationPlan) -> PublishStats:
    """Write a plan's messages to a file: per message a 4-byte big-endian length, then the value."""
    stats = PublishStats()
    with path.open("wb") as out:
        for message in messages(network, plan):
            out.write(len(message.value).to_bytes(4, "big") + message.value)
            _count(stats, message)
    return stats


def _count(stats: PublishStats, out: Outgoing) -> None:
    if out.kind == "valid":
        stats.valid += 1
    elif out.kind == "duplicate":
        stats.duplicates += 1
    else:
        stats.malformed += 1
        stats.malformed_kinds[out.kind] = stats.malformed_kinds.get(out.kind, 0) + 1
