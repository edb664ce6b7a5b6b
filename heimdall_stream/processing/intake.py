"""Intake: bytes → captures the model can localise, or dead letters that say why not.

``decode`` checks the size bound before any parsing (a capture the process assembled itself
comes decoded); ``validate`` checks a capture against the model contract it was routed to and
the input limits.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from heimdall_stream.config import LimitsSettings
from heimdall_stream.errors import DecodeError, InvalidCaptureError
from heimdall_stream.models.contract import ModelContract
from heimdall_stream.processing.records import DeadLetter, Decoded, InputRecord
from heimdall_stream.wire.codec import capture_codec
from heimdall_stream.wire.messages import IqCapture, SampleFormat


def decode(record: InputRecord, limits: LimitsSettings) -> IqCapture | DeadLetter:
    """Bytes → capture; the size bound is checked before any parsing.

    A record that arrives decoded (a set the join assembled from parts it decoded and
    size-checked one by one) is taken as it is: encoding it only to decode it here again would
    add an encode and a decode to every set.
    """
    if record.capture is not None:
        return record.capture
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


def rejection(item: Decoded, contract: ModelContract, limits: LimitsSettings) -> DeadLetter | None:
    """The dead letter of a capture the model cannot localise, or None when it can."""
    try:
        validate(item.capture, contract, limits)
    except InvalidCaptureError as exc:
        return DeadLetter.of(item.record, exc)
    return None


def validate_all(
    items: Sequence[Decoded], contract: ModelContract, limits: LimitsSettings
) -> tuple[list[Decoded], list[DeadLetter]]:
    """Split decoded captures into those the model can localise and dead letters."""
    good: list[Decoded] = []
    bad: list[DeadLetter] = []
    for item in items:
        letter = rejection(item, contract, limits)
        if letter is None:
            good.append(item)
        else:
            bad.append(letter)
    return good, bad


def decode_and_validate(
    records: Sequence[InputRecord], contract: ModelContract, limits: LimitsSettings
) -> tuple[list[Decoded], list[DeadLetter]]:
    """Split records into valid captures and dead letters."""
    decoded, bad = decode_all(records, limits)
    good, invalid = validate_all(decoded, contract, limits)
    return good, bad + invalid
