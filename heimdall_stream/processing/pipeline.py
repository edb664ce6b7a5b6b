"""The pure part of the consumer: a batch of input records in, results and dead letters out.

No Kafka, no Redis, no clocks of its own: ``app`` does the I/O and passes in what the pipeline
needs (the model, cached predictions, the time).  Errors are values: each stage splits its
input into what goes on and ``DeadLetter`` records that name the reason.

Stages: ``decode`` (bytes → ``IqCapture``, size bound first) → ``validate`` (against the model
contract and input limits) → ``prepare`` (features, cache keys) → ``infer`` (onnxruntime, with
bisection so one poisonous capture cannot sink its batch) → ``finish`` (ellipse, GeoJSON,
``Localization``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np

from heimdall_stream.config import LimitsSettings
from heimdall_stream.errors import (
    DecodeError,
    GeometryError,
    HeimdallError,
    InferenceError,
    InvalidCaptureError,
)
from heimdall_stream.geo import ellipse_from_covariance, geojson_feature
from heimdall_stream.models.contract import ModelContract
from heimdall_stream.models.inference import LoadedModel, Prediction, PreparedBatch
from heimdall_stream.wire.codec import capture_codec, localization_codec
from heimdall_stream.wire.messages import Covariance, IqCapture, Lineage, Localization, SampleFormat, Timings

PREDICTION_BYTES = 5 * 8  # cached value: position (2) + covariance (3), float64
TimerFn = Callable[[], float]


@dataclass(frozen=True, slots=True)
class InputRecord:
    """One consumed message, as the pipeline sees it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    consumed_at: float  # monotonic seconds


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A record that cannot be processed, and why."""

    record: InputRecord
    error_class: str
    reason: str
    message: str

    @classmethod
    def of(cls, record: InputRecord, error: HeimdallError) -> DeadLetter:
        """Dead letter for a heimdall error."""
        return cls(record, type(error).__name__, error.reason, str(error))


@dataclass(frozen=True, slots=True)
class Decoded:
    """A decoded, validated capture and the record it came from."""

    record: InputRecord
    capture: IqCapture


@dataclass(frozen=True, slots=True)
class Result:
    """A finished localization and its encoded value."""

    record: InputRecord
    localization: Localization
    value: bytes
    cache_key: str
    prediction: bytes  # what goes into the result cache
    captured_at: datetime


@dataclass
class BatchOutcome:
    """What a batch produced: results, dead letters and how inference went."""

    results: list[Result] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    cache_hits: int = 0
    inference_s: float = 0.0


# --------------------------------------------------------------------------- decode, validate


def decode(record: InputRecord, limits: LimitsSettings) -> IqCapture | DeadLetter:
    """Bytes → capture; the size bound is checked before any parsing."""
    value = record.value
    if value is None:
        return DeadLetter(record, "DecodeError", "empty", "message has no value (tombstone?)")
    if len(value) > limits.max_message_bytes:
        return DeadLetter(
            record,
            "InvalidCaptureError",
            "oversized",
            f"message of {len(value)} bytes exceeds the {limits.max_message_bytes}-byte limit",
        )
    try:
        return capture_codec().decode(value)
    except DecodeError as exc:
        return DeadLetter.of(record, exc)


def validate(capture: IqCapture, contract: ModelContract, limits: LimitsSettings) -> None:
    """Raise ``InvalidCaptureError`` unless the model can localise this capture."""
    receivers = capture.receivers
    if not capture.capture_id:
        raise InvalidCaptureError("capture_id is empty", reason="invalid_id")
    if not receivers:
        raise InvalidCaptureError("capture has no receivers", reason="no_receivers")
    if len(receivers) > limits.max_receivers:
        raise InvalidCaptureError(
            f"{len(receivers)} receivers exceed the limit of {limits.max_receivers}",
            reason="too_many_receivers",
        )
    if not math.isfinite(capture.center_frequency_hz) or capture.center_frequency_hz <= 0:
        raise InvalidCaptureError(
            f"center_frequency_hz {capture.center_frequency_hz} is not a positive number",
            reason="bad_frequency",
        )
    slots = contract.slots
    seen: set[str] = set()
    for rx in receivers:
        if rx.receiver_id not in slots:
            raise InvalidCaptureError(
                f"receiver {rx.receiver_id!r} is not one of the model's receivers", reason="unknown_receiver"
            )
        if rx.receiver_id in seen:
            raise InvalidCaptureError(
                f"receiver {rx.receiver_id!r} appears twice", reason="duplicate_receiver"
            )
        seen.add(rx.receiver_id)
        if rx.sample_rate_hz != contract.sample_rate_hz:
            raise InvalidCaptureError(
                f"receiver {rx.receiver_id}: sample rate {rx.sample_rate_hz} Hz, model expects "
                f"{contract.sample_rate_hz} Hz",
                reason="sample_rate_mismatch",
            )
        if len(rx.samples) % rx.sample_format.bytes_per_sample:
            raise InvalidCaptureError(
                f"receiver {rx.receiver_id}: {len(rx.samples)} bytes is not a whole number of "
                f"{rx.sample_format.value} samples",
                reason="truncated_iq",
            )
        count = rx.sample_count
        if count > limits.max_samples:
            raise InvalidCaptureError(
                f"receiver {rx.receiver_id}: {count} samples exceed the limit of {limits.max_samples}",
                reason="too_many_samples",
            )
        if count != contract.sample_count:
            raise InvalidCaptureError(
                f"receiver {rx.receiver_id}: {count} samples, model expects {contract.sample_count}",
                reason="truncated_iq" if count < contract.sample_count else "sample_count_mismatch",
            )
        if rx.sample_format is SampleFormat.CF32:
            values = np.frombuffer(rx.samples, dtype="<f4")
            if not np.isfinite(values).all():
                raise InvalidCaptureError(
                    f"receiver {rx.receiver_id}: samples contain NaN or infinity", reason="non_finite"
                )
        if not (math.isfinite(rx.latitude) and math.isfinite(rx.longitude)):
            raise InvalidCaptureError(
                f"receiver {rx.receiver_id}: position is not finite", reason="non_finite"
            )


def decode_all(
    records: Sequence[InputRecord], limits: LimitsSettings
) -> tuple[list[Decoded], list[DeadLetter]]:
    """Split records into decoded captures and dead letters (no model needed yet)."""
    good: list[Decoded] = []
    bad: list[DeadLetter] = []
    for record in records:
        capture = decode(record, limits)
        if isinstance(capture, DeadLetter):
            bad.append(capture)
        else:
            good.append(Decoded(record, capture))
    return good, bad


def validate_all(
    items: Sequence[Decoded], contract: ModelContract, limits: LimitsSettings
) -> tuple[list[Decoded], list[DeadLetter]]:
    """Split decoded captures into those the model can localise and dead letters."""
    good: list[Decoded] = []
    bad: list[DeadLetter] = []
    for item in items:
        try:
            validate(item.capture, contract, limits)
        except InvalidCaptureError as exc:
            bad.append(DeadLetter.of(item.record, exc))
            continue
        good.append(item)
    return good, bad


def decode_and_validate(
    records: Sequence[InputRecord], contract: ModelContract, limits: LimitsSettings
) -> tuple[list[Decoded], list[DeadLetter]]:
    """Split records into valid captures and dead letters."""
    decoded, bad = decode_all(records, limits)
    good, invalid = validate_all(decoded, contract, limits)
    return good, bad + invalid


# --------------------------------------------------------------------------- inference


def encode_prediction(position: np.ndarray, covariance: np.ndarray) -> bytes:
    """Cache value of one prediction."""
    return np.concatenate([position, covariance]).astype("<f8").tobytes()


def decode_prediction(value: bytes) -> tuple[np.ndarray, np.ndarray] | None:
    """Inverse of ``encode_prediction``; None for a value of the wrong size."""
    if len(value) != PREDICTION_BYTES:
        return None
    array = np.frombuffer(value, dtype="<f8")
    return array[:2], array[2:]


def infer_isolating(
    model: LoadedModel, batch: PreparedBatch, rows: Sequence[int], timer: TimerFn
) -> tuple[dict[int, tuple[np.ndarray, np.ndarray]], dict[int, InferenceError], float]:
    """Predictions for ``rows``; a failing batch is bisected until the failing rows are found.

    Returns predictions by row, errors by row, and the seconds spent in onnxruntime.
    """
    predictions: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    errors: dict[int, InferenceError] = {}
    spent = 0.0
    pending: list[list[int]] = [list(rows)] if rows else []
    while pending:
        part = pending.pop()
        start = timer()
        try:
            prediction: Prediction = model.infer(batch.subset(part))
            finite = np.isfinite(prediction.position_enu_m).all(axis=1) & np.isfinite(
                prediction.covariance_enu
            ).all(axis=1)
            bad = np.asarray(~finite, dtype=bool)
            if bad.any() and len(part) > 1:
                raise InferenceError("non-finite outputs")  # find them one by one below
        except InferenceError as exc:
            spent += timer() - start
            if len(part) == 1:
                errors[part[0]] = exc
            else:
                half = len(part) // 2
                pending += [part[:half], part[half:]]
            continue
        spent += timer() - start
        for i, row in enumerate(part):
            if bad[i]:
                errors[row] = InferenceError("model returned NaN or infinity for this capture")
            else:
                predictions[row] = (prediction.position_enu_m[i], prediction.covariance_enu[i])
    return predictions, errors, spent


# --------------------------------------------------------------------------- results


def finish(
    item: Decoded,
    prediction: tuple[np.ndarray, np.ndarray],
    latlon: tuple[float, float],
    *,
    model: LoadedModel,
    confidence: float,
    radius: float,
    cache_key: str,
    cache_hit: bool,
    receivers_used: tuple[str, ...],
    batch_id: str,
    batch_size: int,
    queued_ms: float,
    inference_ms: float,
    now: datetime,
) -> Result | DeadLetter:
    """Position and covariance → ``Localization`` with ellipse and GeoJSON, or a dead letter.

    ``latlon`` is the position already converted from the model's east/north frame (the batch
    converts all its positions in one pyproj call).
    """
    position, covariance = prediction
    latitude, longitude = latlon
    try:
        cov = Covariance(float(covariance[0]), float(covariance[1]), float(covariance[2]))
        ellipse = ellipse_from_covariance(cov, confidence, radius=radius)
        geojson = geojson_feature(
            latitude,
            longitude,
            ellipse,
            {"capture_id": item.capture.capture_id, "model_name": model.name, "model_version": model.version},
        )
    except GeometryError as exc:
        return DeadLetter.of(item.record, exc)
    end_to_end_ms = max((now - item.capture.captured_at).total_seconds() * 1000.0, 0.0)
    localization = Localization(
        capture_id=item.capture.capture_id,
        model_name=model.name,
        model_version=model.version,
        latitude=latitude,
        longitude=longitude,
        covariance=cov,
        ellipse=ellipse,
        geojson=geojson,
        receivers_used=receivers_used,
        cache_hit=cache_hit,
        timings=Timings(queued_ms=queued_ms, inference_ms=inference_ms, end_to_end_ms=end_to_end_ms),
        lineage=Lineage(
            source_partition=item.record.partition,
            source_offset=item.record.offset,
            batch_id=batch_id,
            batch_size=batch_size,
        ),
        produced_at=now,
    )
    return Result(
        item.record,
        localization,
        localization_codec().encode(localization),
        cache_key,
        encode_prediction(position, covariance),
        item.capture.captured_at,
    )


def complete_batch(
    items: Sequence[Decoded],
    prepared: PreparedBatch,
    cached: dict[str, bytes],
    *,
    model: LoadedModel,
    confidence: float,
    batch_id: str,
    timer: TimerFn,
    wall_now: Callable[[], datetime],
) -> BatchOutcome:
    """Serve cache hits, infer the misses (isolating failures), and build every result."""
    outcome = BatchOutcome()
    predictions: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for row, key in enumerate(prepared.cache_keys):
        hit = cached.get(key)
        decoded = decode_prediction(hit) if hit is not None else None
        if decoded is not None:
            predictions[row] = decoded
    # Identical inputs within the batch are inferred once; the copies count as cache hits.
    first_row: dict[str, int] = {}
    copies: dict[int, int] = {}
    for row, key in enumerate(prepared.cache_keys):
        if row in predictions:
            continue
        if key in first_row:
            copies[row] = first_row[key]
        else:
            first_row[key] = row
    hits = set(predictions) | set(copies)
    outcome.cache_hits = len(hits)
    started = timer()
    inferred, errors, spent = infer_isolating(model, prepared, list(first_row.values()), timer)
    predictions.update(inferred)
    for row, source in copies.items():
        if source in errors:
            errors[row] = errors[source]
        else:
            predictions[row] = inferred[source]
    outcome.inference_s = spent
    now = wall_now()
    east = np.array([predictions[r][0][0] if r in predictions else 0.0 for r in range(len(items))])
    north = np.array([predictions[r][0][1] if r in predictions else 0.0 for r in range(len(items))])
    lats, lons = model.contract.frame.to_latlon(east, north)
    radius = model.contract.radius(confidence)  # the model's calibrated ellipse size, per batch
    for row, item in enumerate(items):
        if row in errors:
            outcome.dead_letters.append(DeadLetter.of(item.record, errors[row]))
            continue
        result = finish(
            item,
            predictions[row],
            (float(lats[row]), float(lons[row])),
            model=model,
            confidence=confidence,
            radius=radius,
            cache_key=prepared.cache_keys[row],
            cache_hit=row in hits,
            receivers_used=prepared.receivers_used[row],
            batch_id=batch_id,
            batch_size=len(items),
            queued_ms=max((started - item.record.consumed_at) * 1000.0, 0.0),
            inference_ms=spent * 1000.0,
            now=now,
        )
        if isinstance(result, DeadLetter):
            outcome.dead_letters.append(result)
        else:
            outcome.results.append(result)
    return outcome
