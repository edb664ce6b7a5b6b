"""Avro single-object encoding of every record, on fastavro.

A message is ``C3 01`` + the 8-byte little-endian CRC-64-AVRO fingerprint of the writer
schema's canonical form + the Avro body, so a reader can tell which schema wrote it without a
registry.  A ``Codec`` knows its reader schema and any older writer schemas of the same record
(schema evolution); anything else is rejected with one ``DecodeError`` that says what was wrong.

Decoding an ``IqCapture`` copies each receiver's sample bytes exactly once (out of the message
buffer into the ``bytes`` field); ``ReceiverIq.iq`` then views them without another copy.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from functools import cache
from importlib import resources
from typing import Any, Generic, TypeVar

import fastavro
from fastavro.schema import fingerprint, to_parsing_canonical_form

from heimdall_stream.errors import DecodeError
from heimdall_stream.wire.messages import (
    Covariance,
    Ellipse,
    IqCapture,
    Lineage,
    LoadedVersion,
    Localization,
    ModelDeployment,
    ModelStatus,
    ReceiverIq,
    SampleFormat,
    Timings,
    WeightedVersion,
)

MAGIC = b"\xc3\x01"
HEADER_SIZE = len(MAGIC) + 8
SCHEMA_NAMES = ("IqCapture", "Localization", "ModelDeployment", "ModelStatus")

T = TypeVar("T")
Schema = dict[str, Any]


# --------------------------------------------------------------------------- fingerprints


def schema_fingerprint(schema: Schema) -> bytes:
    """The 8 CRC-64-AVRO fingerprint bytes of a parsed schema's canonical form.

    fastavro returns them as hex in the little-endian order single-object encoding wants.
    """
    return bytes.fromhex(fingerprint(to_parsing_canonical_form(schema), "CRC-64-AVRO"))


# --------------------------------------------------------------------------- schemas


@cache
def load_schema(name: str) -> Schema:
    """Parse ``schemas/<name>.avsc`` shipped with the package."""
    text = resources.files("heimdall_stream").joinpath("schemas", f"{name}.avsc").read_text()
    return parse_schema(json.loads(text))


def parse_schema(schema: Mapping[str, Any]) -> Schema:
    """Parse a schema given as a JSON-like mapping (fastavro's parsed form)."""
    parsed = fastavro.parse_schema(dict(schema))
    if not isinstance(parsed, dict):
        raise TypeError("a heimdall schema must be a record")
    return parsed


@cache
def _known_fingerprints() -> dict[bytes, str]:
    return {schema_fingerprint(load_schema(name)): name for name in SCHEMA_NAMES}


class Codec(Generic[T]):
    """Encodes values of one record type to single-object Avro and back."""

    def __init__(
        self,
        schema: Schema,
        to_record: Callable[[T], dict[str, Any]],
        from_record: Callable[[dict[str, Any]], T],
        older_schemas: Iterable[Schema] = (),
    ) -> None:
        self.schema = schema
        self.name = str(schema["name"]).rsplit(".", 1)[-1]
        self._to_record = to_record
        self._from_record = from_record
        self.fingerprint = schema_fingerprint(schema)
        self._header = MAGIC + self.fingerprint
        self._writers: dict[bytes, Schema] = {self.fingerprint: schema}
        for older in older_schemas:
            self._writers[schema_fingerprint(older)] = older

    def encode(self, value: T) -> bytes:
        """Single-object encoding of ``value`` with this codec's schema."""
        out = io.BytesIO()
        out.write(self._header)
        fastavro.schemaless_writer(out, self.schema, self._to_record(value))
        return out.getvalue()

    def decode(self, data: bytes) -> T:
        """Decode single-object Avro written with this schema or an older compatible one."""
        record = self.decode_record(data)
        try:
            return self._from_record(record)
        except (KeyError, TypeError, ValueError) as exc:
            raise DecodeError(f"{self.name}: record does not convert: {exc}", reason="decode") from exc

    def decode_record(self, data: bytes) -> dict[str, Any]:
        """Decode to fastavro's dict form (no dataclass conversion)."""
        if not isinstance(data, bytes | bytearray):
            raise DecodeError(f"{self.name}: expected bytes, got {type(data).__name__}", reason="decode")
        if len(data) < HEADER_SIZE:
            raise DecodeError(
                f"{self.name}: message of {len(data)} bytes is shorter than the 10-byte header",
                reason="truncated",
            )
        if data[:2] != MAGIC:
            raise DecodeError(
                f"{self.name}: not Avro single-object encoding (first bytes {bytes(data[:2]).hex()}, "
                f"expected c301)",
                reason="bad_magic",
            )
        fingerprint = bytes(data[2:HEADER_SIZE])
        writer = self._writers.get(fingerprint)
        if writer is None:
            other = _known_fingerprints().get(fingerprint)
            if other is not None:
                raise DecodeError(
                    f"{self.name}: message was written with schema {other}, expected {self.name}",
                    reason="wrong_schema",
                )
            raise DecodeError(
                f"{self.name}: unknown writer schema fingerprint {fingerprint.hex()}",
                reason="unknown_schema",
            )
        # BytesIO shares the bytes buffer (no copy); each ``bytes`` field is copied once, on read.
        buffer = io.BytesIO(data)
        buffer.seek(HEADER_SIZE)
        try:
            record = fastavro.schemaless_reader(buffer, writer, self.schema)
        except Exception as exc:  # fastavro raises EOFError, ValueError, IndexError, struct.error ...
            raise DecodeError(
                f"{self.name}: body does not parse ({type(exc).__name__}: {exc}); truncated or corrupt",
                reason="truncated" if isinstance(exc, EOFError) else "corrupt",
            ) from exc
        if buffer.tell() != len(data):
            raise DecodeError(
                f"{self.name}: {len(data) - buffer.tell()} trailing bytes after the record",
                reason="corrupt",
            )
        if not isinstance(record, dict):
            raise DecodeError(f"{self.name}: body is not a record", reason="corrupt")
        return record


# --------------------------------------------------------------------------- conversions


def _capture_to_record(capture: IqCapture) -> dict[str, Any]:
    return {
        "capture_id": capture.capture_id,
        "captured_at": capture.captured_at,
        "center_frequency_hz": capture.center_frequency_hz,
        "receivers": [
            {
                "receiver_id": r.receiver_id,
                "latitude": r.latitude,
                "longitude": r.longitude,
                "altitude_m": r.altitude_m,
                "sample_rate_hz": r.sample_rate_hz,
                "sample_format": r.sample_format.value,
                "samples": r.samples,
                "timestamp_offset_ns": r.timestamp_offset_ns,
            }
            for r in capture.receivers
        ],
    }


def _capture_from_record(record: dict[str, Any]) -> IqCapture:
    return IqCapture(
        capture_id=record["capture_id"],
        captured_at=_utc(record["captured_at"]),
        center_frequency_hz=record["center_frequency_hz"],
        receivers=tuple(
            ReceiverIq(
                receiver_id=r["receiver_id"],
                latitude=r["latitude"],
                longitude=r["longitude"],
                altitude_m=r["altitude_m"],
                sample_rate_hz=r["sample_rate_hz"],
                sample_format=SampleFormat(r["sample_format"]),
                samples=r["samples"],
                timestamp_offset_ns=r["timestamp_offset_ns"],
            )
            for r in record["receivers"]
        ),
    )


def _localization_to_record(loc: Localization) -> dict[str, Any]:
    return {
        "capture_id": loc.capture_id,
        "model_name": loc.model_name,
        "model_version": loc.model_version,
        "latitude": loc.latitude,
        "longitude": loc.longitude,
        "covariance": {
            "sigma_east_m": loc.covariance.sigma_east_m,
            "sigma_north_m": loc.covariance.sigma_north_m,
            "rho": loc.covariance.rho,
        },
        "ellipse": {
            "confidence": loc.ellipse.confidence,
            "semi_major_m": loc.ellipse.semi_major_m,
            "semi_minor_m": loc.ellipse.semi_minor_m,
            "orientation_deg": loc.ellipse.orientation_deg,
        },
        "geojson": loc.geojson,
        "receivers_used": list(loc.receivers_used),
        "cache_hit": loc.cache_hit,
        "timings": {
            "queued_ms": loc.timings.queued_ms,
            "inference_ms": loc.timings.inference_ms,
            "end_to_end_ms": loc.timings.end_to_end_ms,
        },
        "lineage": {
            "source_partition": loc.lineage.source_partition,
            "source_offset": loc.lineage.source_offset,
            "batch_id": loc.lineage.batch_id,
            "batch_size": loc.lineage.batch_size,
        },
        "produced_at": loc.produced_at,
    }


def _localization_from_record(record: dict[str, Any]) -> Localization:
    return Localization(
        capture_id=record["capture_id"],
        model_name=record["model_name"],
        model_version=record["model_version"],
        latitude=record["latitude"],
        longitude=record["longitude"],
        covariance=Covariance(**record["covariance"]),
        ellipse=Ellipse(**record["ellipse"]),
        geojson=record["geojson"],
        receivers_used=tuple(record["receivers_used"]),
        cache_hit=record["cache_hit"],
        timings=Timings(**record["timings"]),
        lineage=Lineage(**record["lineage"]),
        produced_at=_utc(record["produced_at"]),
    )


def deployment_to_record(dep: ModelDeployment) -> dict[str, Any]:
    """The Avro record of a deployment (also the body its HMAC signs)."""
    return {
        "model_name": dep.model_name,
        "generation": dep.generation,
        "versions": [{"model_uri": v.model_uri, "weight": v.weight} for v in dep.versions],
        "shadow": list(dep.shadow),
        "issued_by": dep.issued_by,
        "issued_at": dep.issued_at,
        "signature": dep.signature,
    }


def _deployment_from_record(record: dict[str, Any]) -> ModelDeployment:
    return ModelDeployment(
        model_name=record["model_name"],
        generation=record["generation"],
        versions=tuple(WeightedVersion(**v) for v in record["versions"]),
        shadow=tuple(record["shadow"]),
        issued_by=record["issued_by"],
        issued_at=_utc(record["issued_at"]),
        signature=record["signature"],
    )


def _status_to_record(status: ModelStatus) -> dict[str, Any]:
    return {
        "instance_id": status.instance_id,
        "model_name": status.model_name,
        "generation": status.generation,
        "versions": [
            {
                "model_uri": v.model_uri,
                "version": v.version,
                "sha256": v.sha256,
                "weight": v.weight,
                "shadow": v.shadow,
            }
            for v in status.versions
        ],
        "error": status.error,
        "requested_generation": status.requested_generation,
        "reported_at": status.reported_at,
    }


def _status_from_record(record: dict[str, Any]) -> ModelStatus:
    return ModelStatus(
        instance_id=record["instance_id"],
        model_name=record["model_name"],
        generation=record["generation"],
        versions=tuple(LoadedVersion(**v) for v in record["versions"]),
        error=record["error"],
        requested_generation=record["requested_generation"],
        reported_at=_utc(record["reported_at"]),
    )


def _utc(value: datetime) -> datetime:
    if not isinstance(value, datetime):
        raise TypeError(f"expected a timestamp, got {type(value).__name__}")
    return value


# --------------------------------------------------------------------------- codecs


@cache
def capture_codec() -> Codec[IqCapture]:
    """Codec of ``IqCapture``."""
    return Codec(load_schema("IqCapture"), _capture_to_record, _capture_from_record)


@cache
def localization_codec() -> Codec[Localization]:
    """Codec of ``Localization``."""
    return Codec(load_schema("Localization"), _localization_to_record, _localization_from_record)


@cache
def deployment_codec() -> Codec[ModelDeployment]:
    """Codec of ``ModelDeployment``."""
    return Codec(load_schema("ModelDeployment"), deployment_to_record, _deployment_from_record)


@cache
def status_codec() -> Codec[ModelStatus]:
    """Codec of ``ModelStatus``."""
    return Codec(load_schema("ModelStatus"), _status_to_record, _status_from_record)
