"""Request bodies → capture messages, and ``Localization`` → JSON.

A capture arrives as the input topic carries it (Avro single-object encoding, content type
``application/vnd.heimdall.iqcapture+avro``) or as JSON with base64 samples.  Either way the
result is the Avro bytes of the capture: the batch path then decodes and validates them exactly
as it does a Kafka message, so the API answers with the dead-letter reasons of the stream.  A
JSON capture is converted to Avro first (one extra encode, small next to the features) rather
than given a second validation path.

``/predict/batch`` takes several Avro captures framed as ``write_file`` writes them (a 4-byte
big-endian length before each value, content type ``application/vnd.heimdall.iqcapture-batch
+avro``), or JSON ``{"captures": [...]}``.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
from datetime import UTC, datetime
from typing import Any

from heimdall_stream.errors import DecodeError
from heimdall_stream.wire.codec import capture_codec
from heimdall_stream.wire.messages import IqCapture, Localization, ReceiverIq, SampleFormat

AVRO_CAPTURE = "application/vnd.heimdall.iqcapture+avro"
AVRO_CAPTURE_BATCH = "application/vnd.heimdall.iqcapture-batch+avro"
AVRO_LOCALIZATION = "application/vnd.heimdall.localization+avro"
JSON = "application/json"
FRAME_HEADER = 4


def media_type(content_type: str | None) -> str:
    """The media type of a Content-Type header, without parameters, lower case."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def is_avro(content_type: str | None) -> bool:
    """Whether a body is Avro (any ``+avro`` or ``avro/binary`` type), else it is read as JSON."""
    kind = media_type(content_type)
    return kind.endswith("+avro") or kind in ("avro/binary", "application/avro", "application/octet-stream")


def single_capture(body: bytes, content_type: str | None) -> tuple[bytes, str | None]:
    """The capture message of a /predict body, and the ``model`` pin a JSON body names."""
    if is_avro(content_type):
        return body, None
    document = _json(body)
    if not isinstance(document, dict):
        raise DecodeError("JSON body is not an object", reason="decode")
    capture = document.get("capture", document)  # {"capture": {...}, "model": "3"} or the capture itself
    return capture_message(capture), _pin(document.get("model"))


def batch_captures(body: bytes, content_type: str | None) -> tuple[list[bytes], str | None]:
    """The capture messages of a /predict/batch body, and the ``model`` pin a JSON body names."""
    if is_avro(content_type):
        return split_frames(body), None
    document = _json(body)
    captures = document.get("captures") if isinstance(document, dict) else None
    if not isinstance(captures, list):
        raise DecodeError('JSON body needs a "captures" array', reason="decode")
    return [capture_message(item) for item in captures], _pin(document.get("model"))


def split_frames(body: bytes) -> list[bytes]:
    """Values of a length-prefixed body (4-byte big-endian length, then the value, repeated)."""
    values: list[bytes] = []
    at = 0
    while at < len(body):
        if len(body) - at < FRAME_HEADER:
            raise DecodeError(
                f"batch body: {len(body) - at} bytes left, too few for a length", reason="truncated"
            )
        size = int.from_bytes(body[at : at + FRAME_HEADER], "big")
        at += FRAME_HEADER
        if size > len(body) - at:
            raise DecodeError(
                f"batch body: value {len(values)} claims {size} bytes, {len(body) - at} left",
                reason="truncated",
            )
        values.append(body[at : at + size])
        at += size
    return values


def join_frames(values: list[bytes]) -> bytes:
    """Inverse of ``split_frames``: what a client sends to /predict/batch as Avro."""
    return b"".join(len(v).to_bytes(FRAME_HEADER, "big") + v for v in values)


def capture_message(item: Any) -> bytes:
    """A JSON capture (samples base64) → its Avro single-object message."""
    if not isinstance(item, dict):
        raise DecodeError("a capture must be a JSON object", reason="decode")
    try:
        receivers = item["receivers"]
        if not isinstance(receivers, list):
            raise DecodeError('"receivers" must be an array', reason="decode")
        capture = IqCapture(
            capture_id=_text(item["capture_id"], "capture_id"),
            captured_at=_timestamp(item.get("captured_at")),
            center_frequency_hz=_number(item["center_frequency_hz"], "center_frequency_hz"),
            receivers=tuple(_receiver(rx, index) for index, rx in enumerate(receivers)),
        )
    except KeyError as exc:
        raise DecodeError(f"capture: missing field {exc.args[0]!r}", reason="decode") from None
    try:
        return capture_codec().encode(capture)
    except (ValueError, TypeError, OverflowError) as exc:  # e.g. an integer out of Avro's range
        raise DecodeError(f"capture does not encode: {exc}", reason="decode") from None


def capture_json(capture: IqCapture) -> dict[str, Any]:
    """A capture as the JSON body of /predict (for clients and tests)."""
    return {
        "capture_id": capture.capture_id,
        "captured_at": capture.captured_at.isoformat(),
        "center_frequency_hz": capture.center_frequency_hz,
        "receivers": [
            {
                "receiver_id": rx.receiver_id,
                "latitude": rx.latitude,
                "longitude": rx.longitude,
                "altitude_m": rx.altitude_m,
                "sample_rate_hz": rx.sample_rate_hz,
                "sample_format": rx.sample_format.value,
                "samples": base64.b64encode(rx.samples).decode("ascii"),
                "timestamp_offset_ns": rx.timestamp_offset_ns,
            }
            for rx in capture.receivers
        ],
    }


def localization_json(localization: Localization) -> dict[str, Any]:
    """A ``Localization`` as JSON: every wire field, the GeoJSON FeatureCollection as an object."""
    document = dataclasses.asdict(localization)
    document["geojson"] = json.loads(localization.geojson)
    document["receivers_used"] = list(localization.receivers_used)
    document["produced_at"] = localization.produced_at.isoformat()
    return document


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DecodeError(f"body is not JSON: {exc}", reason="decode") from None


def _pin(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str | int) or isinstance(value, bool):
        raise DecodeError('"model" must be a version string', reason="decode")
    return str(value)


def _receiver(rx: Any, index: int) -> ReceiverIq:
    where = f"receivers[{index}]"
    if not isinstance(rx, dict):
        raise DecodeError(f"{where} must be an object", reason="decode")
    try:
        sample_format = SampleFormat(rx["sample_format"])
    except ValueError:
        raise DecodeError(f"{where}.sample_format must be CI16 or CF32", reason="decode") from None
    samples = rx["samples"]
    if not isinstance(samples, str):
        raise DecodeError(f"{where}.samples must be a base64 string", reason="decode")
    try:
        raw = base64.b64decode(samples, validate=True)
    except (binascii.Error, ValueError):
        raise DecodeError(f"{where}.samples is not base64", reason="decode") from None
    altitude, offset = rx.get("altitude_m"), rx.get("timestamp_offset_ns")
    return ReceiverIq(
        receiver_id=_text(rx["receiver_id"], f"{where}.receiver_id"),
        latitude=_number(rx["latitude"], f"{where}.latitude"),
        longitude=_number(rx["longitude"], f"{where}.longitude"),
        sample_rate_hz=_number(rx["sample_rate_hz"], f"{where}.sample_rate_hz"),
        sample_format=sample_format,
        samples=raw,
        altitude_m=None if altitude is None else _number(altitude, f"{where}.altitude_m"),
        timestamp_offset_ns=None if offset is None else _integer(offset, f"{where}.timestamp_offset_ns"),
    )


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise DecodeError(f"{where} must be a string", reason="decode")
    return value


def _number(value: Any, where: str) -> float:
    # NaN and infinity are not JSON, but Python's parser accepts them: validation judges them.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise DecodeError(f"{where} must be a number", reason="decode")
    return float(value)


def _integer(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise DecodeError(f"{where} must be an integer", reason="decode")
    return value


def _timestamp(value: Any) -> datetime:
    if value is None:
        return datetime.now(UTC)  # a request without capture time: "now" (end-to-end = service time)
    if not isinstance(value, str):
        raise DecodeError("captured_at must be an ISO 8601 string", reason="decode")
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise DecodeError(f"captured_at {value!r} is not ISO 8601", reason="decode") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
