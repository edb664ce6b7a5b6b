"""Malformed capture messages, for tests and ``simulate --malformed``.

Each maker returns bytes that a correct consumer must route to the dead-letter topic with a
reason, without stopping: garbage, a record of another schema, truncated IQ, NaN samples, an
unknown receiver, an oversized message.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import UTC, datetime

import numpy as np

from heimdall_stream.wire.codec import capture_codec, status_codec
from heimdall_stream.wire.messages import IqCapture, ModelStatus, SampleFormat

FaultMaker = Callable[[IqCapture, np.random.Generator], bytes]


def garbage(capture: IqCapture, rng: np.random.Generator) -> bytes:
    """Random bytes."""
    del capture
    return rng.bytes(int(rng.integers(1, 2048)))


def wrong_schema(capture: IqCapture, rng: np.random.Generator) -> bytes:
    """A valid Avro record of another schema (ModelStatus) on the capture topic."""
    del rng
    return status_codec().encode(ModelStatus(capture.capture_id, "not-a-capture", 0, (), datetime.now(UTC)))


def truncated_iq(capture: IqCapture, rng: np.random.Generator) -> bytes:
    """One receiver's samples cut short (well-formed Avro, wrong length)."""
    first = capture.receivers[0]
    cut = int(rng.integers(1, max(first.sample_count // 2, 2))) * first.sample_format.bytes_per_sample + 1
    broken = dataclasses.replace(first, samples=first.samples[:cut])
    return capture_codec().encode(dataclasses.replace(capture, receivers=(broken, *capture.receivers[1:])))


def nan_samples(capture: IqCapture, rng: np.random.Generator) -> bytes:
    """One receiver in CF32 with NaNs among its samples."""
    first = capture.receivers[0]
    iq = first.iq().T.copy()
    iq[rng.integers(0, len(iq), size=5)] = np.nan
    broken = dataclasses.replace(first, sample_format=SampleFormat.CF32, samples=iq.astype("<f4").tobytes())
    return capture_codec().encode(dataclasses.replace(capture, receivers=(broken, *capture.receivers[1:])))


def unknown_receiver(capture: IqCapture, rng: np.random.Generator) -> bytes:
    """A receiver id no model knows."""
    del rng
    stranger = dataclasses.replace(capture.receivers[0], receiver_id="atlantis-rx")
    return capture_codec().encode(dataclasses.replace(capture, receivers=(stranger, *capture.receivers[1:])))


def oversized(capture: IqCapture, rng: np.random.Generator, size: int = 5 * 1024 * 1024) -> bytes:
    """A capture far beyond the size limit (many copies of one receiver)."""
    del rng
    first = capture.receivers[0]
    copies = size // max(len(first.samples), 1) + 1
    many = tuple(dataclasses.replace(first, receiver_id=f"{first.receiver_id}-{i}") for i in range(copies))
    return capture_codec().encode(dataclasses.replace(capture, receivers=many))


FAULTS: dict[str, FaultMaker] = {
    "garbage": garbage,
    "wrong_schema": wrong_schema,
    "truncated_iq": truncated_iq,
    "nan_samples": nan_samples,
    "unknown_receiver": unknown_receiver,
    "oversized": oversized,
}
