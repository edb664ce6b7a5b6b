"""Avro single-object encoding of every record, on fastavro.

A message is ``C3 01`` + the 8-byte little-endian CRC-64-AVRO fingerprint of the writer
schema's canonical form + the Avro body, so a reader can tell which schema wrote it without a
registry.  A ``Codec`` knows its reader schema and any older writer schemas of the same record
(schema evolution); anything else is rejected with one ``DecodeError`` that says what was wrong.

Each record is declared once, as a frozen dataclass in ``wire.messages`` and a schema in
``schemas/<Name>.avsc``; ``record_codec`` derives the conversions between them
(``wire.records``).  To evolve a record, keep its current schema as ``schemas/<Name>.v<N>.avsc``
(the next free N), then add the field with a default to both the dataclass and ``<Name>.avsc``:
messages written with any shipped version still decode.

Decoding an ``IqCapture`` copies each receiver's sample bytes exactly once (out of the message
buffer into the ``bytes`` field); ``ReceiverIq.iq`` then views them without another copy.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable, Iterable, Mapping
from functools import cache
from importlib import resources
from typing import Any, Generic, TypeVar

import fastavro
from fastavro.schema import fingerprint, to_parsing_canonical_form

from heimdall_stream.errors import DecodeError
from heimdall_stream.wire.messages import (
    GroundTruth,
    IqCapture,
    Localization,
    ModelDeployment,
    ModelStatus,
    ReceiverCapture,
)
from heimdall_stream.wire.records import record_mapping

MAGIC = b"\xc3\x01"
HEADER_SIZE = len(MAGIC) + 8
SCHEMA_NAMES = (
    "IqCapture",
    "Localization",
    "ModelDeployment",
    "ModelStatus",
    "GroundTruth",
    "ReceiverCapture",
)

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
def older_schemas(name: str) -> tuple[Schema, ...]:
    """The earlier versions of a record's schema shipped as ``schemas/<name>.v<N>.avsc``, oldest first."""
    pattern = re.compile(rf"{re.escape(name)}\.v(\d+)\.avsc")
    directory = resources.files("heimdall_stream").joinpath("schemas")
    found = [(int(m[1]), m[0]) for m in (pattern.fullmatch(p.name) for p in directory.iterdir()) if m]
    return tuple(load_schema(file.removesuffix(".avsc")) for _, file in sorted(found))


@cache
def _known_fingerprints() -> dict[bytes, str]:
    known: dict[bytes, str] = {}
    for name in SCHEMA_NAMES:
        for schema in (load_schema(name), *older_schemas(name)):
            known[schema_fingerprint(schema)] = name
    return known


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


# --------------------------------------------------------------------------- codecs


def record_codec(cls: type[T]) -> Codec[T]:
    """The codec of a wire dataclass: ``schemas/<ClassName>.avsc``, conversions derived from the types.

    The older versions of the schema shipped beside it (``<ClassName>.v<N>.avsc``) are the
    writer schemas it still reads.
    """
    name = cls.__name__
    schema = load_schema(name)
    mapping = record_mapping(cls, schema)
    return Codec(schema, mapping.to_record, mapping.from_record, older_schemas(name))


@cache
def capture_codec() -> Codec[IqCapture]:
    """Codec of ``IqCapture``."""
    return record_codec(IqCapture)


@cache
def localization_codec() -> Codec[Localization]:
    """Codec of ``Localization``."""
    return record_codec(Localization)


@cache
def deployment_codec() -> Codec[ModelDeployment]:
    """Codec of ``ModelDeployment`` (its encoding with an empty signature is what the HMAC signs)."""
    return record_codec(ModelDeployment)


@cache
def status_codec() -> Codec[ModelStatus]:
    """Codec of ``ModelStatus``."""
    return record_codec(ModelStatus)


@cache
def ground_truth_codec() -> Codec[GroundTruth]:
    """Codec of ``GroundTruth``."""
    return record_codec(GroundTruth)


@cache
def receiver_codec() -> Codec[ReceiverCapture]:
    """Codec of ``ReceiverCapture`` (one receiver's part of a transmission)."""
    return record_codec(ReceiverCapture)
