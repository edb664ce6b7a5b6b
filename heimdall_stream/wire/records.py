"""Conversions between the wire dataclasses and fastavro's record dicts, derived from the types.

``record_mapping(cls, schema)`` walks a frozen dataclass's type hints next to its Avro record
schema once, checks that they describe the same record, and returns the two conversions:

* dataclass field ↔ record field of the same name (the sets must be equal);
* nested dataclass ↔ nested record (the record is named like the class);
* ``tuple[X, ...]`` ↔ array of X;
* ``StrEnum`` ↔ enum whose symbols are the members' values;
* ``datetime`` ↔ ``timestamp-micros``/``timestamp-millis`` long;
* ``X | None`` ↔ union of ``null`` and X;
* ``str``, ``bytes``, ``bool``, ``int``, ``float`` ↔ the matching primitive.

Adding a field is one dataclass field plus one schema field; a mismatch fails when the codec is
built, not on the first message that happens to carry it.  Values that need no conversion are
passed through untouched (a ``bytes`` field keeps the very object fastavro read), so decoding
adds no copy and no per-field call beyond what the types require.
"""

from __future__ import annotations

import dataclasses
import enum
import operator
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

T = TypeVar("T")
Schema = dict[str, Any]
# A conversion of one value; ``None`` means the value is already in the other side's form.
Convert = Callable[[Any], Any] | None

_PRIMITIVES: dict[type, frozenset[str]] = {
    str: frozenset({"string"}),
    bytes: frozenset({"bytes"}),
    bool: frozenset({"boolean"}),
    int: frozenset({"int", "long"}),
    float: frozenset({"double", "float"}),
}
_TIMESTAMPS = frozenset({"timestamp-micros", "timestamp-millis"})


@dataclass(frozen=True)
class RecordMapping(Generic[T]):
    """The two conversions of one record type."""

    to_record: Callable[[T], dict[str, Any]]
    # Takes ownership of the dict it is given (fills converted values in place).
    from_record: Callable[[dict[str, Any]], T]


def record_mapping(cls: type[T], schema: Mapping[str, Any]) -> RecordMapping[T]:
    """Derive the conversions of dataclass ``cls`` from its type hints and Avro ``schema``.

    Raises ``TypeError`` naming the field when the dataclass and the schema disagree.
    """
    encode, decode = _record(cls, dict(schema), {}, cls.__name__)
    return RecordMapping(encode, decode)


def _record(cls: Any, schema: Schema, names: dict[str, Schema], where: str) -> tuple[Any, Any]:
    """to_record and from_record of one (possibly nested) dataclass."""
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"{where}: {cls!r} is not a dataclass but the schema has a record")
    _check_name(cls, schema, where)
    hints = typing.get_type_hints(cls)
    in_class = [f.name for f in dataclasses.fields(cls)]
    in_schema = [f["name"] for f in schema["fields"]]
    if set(in_class) != set(in_schema):
        raise TypeError(
            f"{where}: dataclass fields and schema fields differ "
            f"(only in the dataclass: {sorted(set(in_class) - set(in_schema))}, "
            f"only in the schema: {sorted(set(in_schema) - set(in_class))})"
        )
    getters: list[tuple[str, Callable[[Any], Any]]] = []
    encoders: list[tuple[str, Callable[[Any], Any]]] = []
    decoders: list[tuple[str, Callable[[Any], Any]]] = []
    for field in schema["fields"]:
        name = field["name"]
        encode, decode = _value(hints[name], field["type"], names, f"{where}.{name}")
        getters.append((name, operator.attrgetter(name)))
        if encode is not None:
            encoders.append((name, encode))
        if decode is not None:
            decoders.append((name, decode))

    def to_record(value: Any) -> dict[str, Any]:
        record = {name: get(value) for name, get in getters}
        for name, convert in encoders:
            record[name] = convert(record[name])
        return record

    def from_record(record: dict[str, Any]) -> Any:
        for name, convert in decoders:
            record[name] = convert(record[name])
        return cls(**record)

    return to_record, from_record


def _value(hint: Any, avro: Any, names: dict[str, Schema], where: str) -> tuple[Convert, Convert]:
    """(encode, decode) of one value of Python type ``hint`` and Avro type ``avro``."""
    avro = _resolve(avro, names)
    inner = _optional(hint)
    if inner is not None:
        return _nullable(inner, avro, names, where)
    if isinstance(avro, list):
        raise TypeError(f"{where}: the schema has a union {avro} but the type {hint} is not optional")
    kind = avro if isinstance(avro, str) else avro["type"]
    logical = avro.get("logicalType") if isinstance(avro, dict) else None
    if hint is datetime:
        if logical not in _TIMESTAMPS:
            raise TypeError(f"{where}: datetime needs a timestamp logical type, the schema has {avro}")
        return None, _timestamp
    if typing.get_origin(hint) is tuple:
        return _array(hint, avro, names, where)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return _enum(hint, avro, where)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        if kind != "record":
            raise TypeError(f"{where}: dataclass {hint.__name__} needs a record, the schema has {avro}")
        return _record(hint, avro, names, where)
    if hint in _PRIMITIVES and kind in _PRIMITIVES[hint] and logical is None:
        return None, None
    raise TypeError(f"{where}: type {hint} does not map to Avro type {avro}")


def _resolve(avro: Any, names: dict[str, Schema]) -> Any:
    """A named type's definition for a reference to it; remembers definitions on the way."""
    if isinstance(avro, str):
        return names.get(avro, avro)
    if isinstance(avro, dict) and avro.get("type") in {"record", "enum", "fixed"}:
        names[avro["name"]] = avro
    return avro


def _optional(hint: Any) -> Any:
    """X for ``X | None``, else None."""
    if typing.get_origin(hint) not in (typing.Union, types.UnionType):
        return None
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if len(args) != 1 or len(args) == len(typing.get_args(hint)):
        raise TypeError(f"only X | None unions map to Avro, got {hint}")
    return args[0]


def _nullable(inner: Any, avro: Any, names: dict[str, Schema], where: str) -> tuple[Convert, Convert]:
    if not (isinstance(avro, list) and len(avro) == 2 and "null" in avro):
        raise TypeError(f"{where}: an optional type needs a union with null, the schema has {avro}")
    other = avro[1] if avro[0] == "null" else avro[0]
    encode, decode = _value(inner, other, names, where)
    return _or_none(encode), _or_none(decode)


def _or_none(convert: Convert) -> Convert:
    if convert is None:
        return None
    return lambda v: None if v is None else convert(v)


def _array(hint: Any, avro: Any, names: dict[str, Schema], where: str) -> tuple[Convert, Convert]:
    args = typing.get_args(hint)
    if len(args) != 2 or args[1] is not Ellipsis:
        raise TypeError(f"{where}: only tuple[X, ...] maps to an array, got {hint}")
    if not (isinstance(avro, dict) and avro.get("type") == "array"):
        raise TypeError(f"{where}: a tuple needs an array, the schema has {avro}")
    encode, decode = _value(args[0], avro["items"], names, f"{where}[]")
    # fastavro writes any sequence, so a tuple of plain values goes out as it is.
    encode_all = None if encode is None else (lambda v: [encode(x) for x in v])
    decode_all = tuple if decode is None else (lambda v: tuple(map(decode, v)))
    return encode_all, decode_all


def _enum(hint: type[enum.Enum], avro: Any, where: str) -> tuple[Convert, Convert]:
    if not (isinstance(avro, dict) and avro.get("type") == "enum"):
        raise TypeError(f"{where}: enum {hint.__name__} needs an Avro enum, the schema has {avro}")
    _check_name(hint, avro, where)
    members = {str(m.value): m for m in hint}
    if set(members) != set(avro["symbols"]):
        raise TypeError(
            f"{where}: {hint.__name__} values {sorted(members)} differ from symbols {avro['symbols']}"
        )
    # A StrEnum member is its symbol already; a lookup (KeyError on an unknown symbol) is
    # cheaper than calling the enum class.
    encode = None if issubclass(hint, str) else operator.attrgetter("value")
    return encode, members.__getitem__


def _check_name(cls: type, avro: Schema, where: str) -> None:
    if str(avro["name"]).rsplit(".", 1)[-1] != cls.__name__:
        raise TypeError(f"{where}: {cls.__name__} is named {avro['name']} in the schema")


def _timestamp(value: Any) -> datetime:
    if not isinstance(value, datetime):
        raise TypeError(f"expected a timestamp, got {type(value).__name__}")
    return value
