"""The broker's own latency floor: the half-load offer with no consumer under test at all.

The same producer offers the same captures at the same rate to a fresh topic, and a
read_committed reader timestamps each capture as soon as librdkafka hands it over (its own
latency = receipt − the message's CreateTime, which the producer sets when it is offered).  The
producer's acknowledgements are timed too (offer → acked by the broker).

Whatever tail this shows, every system measured at that rate inherits: it is the producer's
batching, the broker's append and the fetch, on a machine whose two cores also run the load
generator and the reader.  A system's p99 is read against it.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np
from confluent_kafka import Consumer, KafkaError, Message

from bench.stream import Bench, distinct_capture, open_reader
from heimdall_stream.wire.codec import capture_codec
from heimdall_stream.wire.messages import IqCapture


def _percentiles(values_ms: list[float]) -> dict[str, float]:
    if not values_ms:
        return {"p50": float("nan"), "p95": float("nan"), "p99": float("nan"), "max": float("nan")}
    array = np.asarray(values_ms)
    return {
        "p50": float(np.percentile(array, 50)),
        "p95": float(np.percentile(array, 95)),
        "p99": float(np.percentile(array, 99)),
        "max": float(array.max()),
    }


def _read(consumer: Consumer, expected: int, timeout: float, out: list[float]) -> None:
    """Receipt − CreateTime of every message, read_committed, as librdkafka hands it over."""
    deadline = time.monotonic() + timeout
    try:
        while len(out) < expected and time.monotonic() < deadline:
            first = consumer.poll(0.1)
            if first is None:
                continue
            for message in [first, *consumer.consume(num_messages=500, timeout=0)]:
                if message.error() is None:
                    out.append(time.time() * 1000 - message.timestamp()[1])
    finally:
        consumer.close()


def _acked_into(acked: list[float], offered: float) -> Callable[[KafkaError | None, Message], None]:
    """A delivery callback adding offer → acknowledgement milliseconds to ``acked``."""

    def on_delivery(err: KafkaError | None, _message: Message) -> None:
        if err is None:
            acked.append((time.monotonic() - offered) * 1000)

    return on_delivery


def broker_floor(bench: Bench, pool: list[IqCapture], count: int, rate: float) -> dict[str, Any]:
    """Offer ``count`` captures at ``rate``/s with nobody consuming but a reader; both latencies."""
    topic = f"bench.floor.{uuid.uuid4().hex[:6]}"
    bench.create_topics([topic])
    received: list[float] = []
    consumer = open_reader(bench.bootstrap, topic, "bench-floor")
    reader = threading.Thread(target=_read, args=(consumer, count, count / rate + 120, received), daemon=True)
    reader.start()
    acked: list[float] = []
    producer = bench.load_producer(topic)  # the producer every system's offer came from
    codec = capture_codec()
    start = time.monotonic()
    for i in range(count):
        while (delay := start + i / rate - time.monotonic()) > 0:
            producer.poll(min(delay, 0.02))
        capture = distinct_capture(pool, i, f"floor-{i:06d}")
        producer.produce(
            topic,
            key=capture.capture_id.encode(),
            value=codec.encode(capture),
            on_delivery=_acked_into(acked, time.monotonic()),
        )
        producer.poll(0)
    producer.flush(120)
    reader.join()
    return {
        "offered_rate": rate,
        "captures": count,
        "received": len(received),
        "offer_to_readable_ms": _percentiles(received),
        "offer_to_acked_ms": _percentiles(acked),
    }


def floor_line(floor: dict[str, Any]) -> str:
    """A table row for ``compare.table``: the floor's half-load p50 / p99."""
    latency = floor["offer_to_readable_ms"]
    acked = floor["offer_to_acked_ms"]
    return (
        f"| broker alone: offer → readable, no consumer (→ acked {acked['p50']:.0f} / {acked['p99']:.0f}) "
        f"| | | | | | | {latency['p50']:.0f} / {latency['p99']:.0f} | | | |"
    )
