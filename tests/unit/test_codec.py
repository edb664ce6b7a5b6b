"""Avro single-object codec: round trips, evolution, and one clear DecodeError for bad bytes."""

from __future__ import annotations

import dataclasses
import io
import json
import tracemalloc
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import fastavro
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from heimdall_stream.errors import DecodeError
from heimdall_stream.wire.codec import (
    HEADER_SIZE,
    MAGIC,
    Codec,
    capture_codec,
    deployment_codec,
    ground_truth_codec,
    load_schema,
    localization_codec,
    older_schemas,
    parse_schema,
    schema_fingerprint,
    status_codec,
)
from heimdall_stream.wire.messages import (
    ApplyState,
    ConfidenceRadius,
    Covariance,
    Ellipse,
    GroundTruth,
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
from heimdall_stream.wire.records import record_mapping

REPO = Path(__file__).resolve().parents[2]
finite = st.floats(allow_nan=False, allow_infinity=False, width=64)
timestamps = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
).map(lambda d: d.replace(microsecond=d.microsecond))
text = st.text(max_size=40)

receivers = st.builds(
    ReceiverIq,
    receiver_id=text,
    latitude=finite,
    longitude=finite,
    sample_rate_hz=finite,
    sample_format=st.sampled_from(list(SampleFormat)),
    samples=st.binary(max_size=512),
    altitude_m=st.none() | finite,
    timestamp_offset_ns=st.none() | st.integers(-(2**63), 2**63 - 1),
)
captures = st.builds(
    IqCapture,
    capture_id=text,
    captured_at=timestamps,
    center_frequency_hz=finite,
    receivers=st.lists(receivers, max_size=8).map(tuple),
)
localizations = st.builds(
    Localization,
    capture_id=text,
    model_name=text,
    model_version=text,
    latitude=finite,
    longitude=finite,
    covariance=st.builds(Covariance, finite, finite, finite),
    ellipse=st.builds(Ellipse, finite, finite, finite, finite, st.none() | finite),
    geojson=text,
    receivers_used=st.lists(text, max_size=7).map(tuple),
    cache_hit=st.booleans(),
    timings=st.builds(Timings, finite, finite, finite),
    lineage=st.builds(
        Lineage, st.integers(0, 2**31 - 1), st.integers(0, 2**63 - 1), text, st.integers(0, 2**31 - 1)
    ),
    produced_at=timestamps,
    radii=st.lists(st.builds(ConfidenceRadius, finite, finite), max_size=3).map(tuple),
    quality=st.floats(0.0, 1.0),
)
ground_truths = st.builds(GroundTruth, text, finite, finite, timestamps, text)
deployments = st.builds(
    ModelDeployment,
    model_name=text,
    generation=st.integers(0, 2**63 - 1),
    versions=st.lists(st.builds(WeightedVersion, text, finite), max_size=4).map(tuple),
    issued_by=text,
    issued_at=timestamps,
    shadow=st.lists(text, max_size=3).map(tuple),
    signature=text,
)
statuses = st.builds(
    ModelStatus,
    instance_id=text,
    model_name=text,
    generation=st.integers(0, 2**63 - 1),
    versions=st.lists(st.builds(LoadedVersion, text, text, text, finite, st.booleans()), max_size=4).map(
        tuple
    ),
    reported_at=timestamps,
    error=st.none() | text,
    requested_generation=st.integers(0, 2**63 - 1),
    state=st.sampled_from(list(ApplyState)),
)


@given(captures)
def test_capture_round_trip(capture):
    data = capture_codec().encode(capture)
    assert data[:2] == MAGIC
    assert capture_codec().decode(data) == capture


@given(localizations)
def test_localization_round_trip(value):
    assert localization_codec().decode(localization_codec().encode(value)) == value


@given(ground_truths)
def test_ground_truth_round_trip(value):
    assert ground_truth_codec().decode(ground_truth_codec().encode(value)) == value


def test_a_result_written_before_it_carried_its_radius_decodes_with_none_and_no_radii():
    v1 = older_schemas("Localization")[0]
    # The fingerprint every result written so far carries on heimdall.localizations.
    assert schema_fingerprint(v1).hex() == "f8aa1292fb1ef327"
    old_writer = Codec(v1, lambda record: record, lambda record: record)
    record = {
        "capture_id": "c",
        "model_name": "m",
        "model_version": "3",
        "latitude": 45.0,
        "longitude": 7.6,
        "covariance": {"sigma_east_m": 100.0, "sigma_north_m": 50.0, "rho": 0.1},
        "ellipse": {
            "confidence": 0.95,
            "semi_major_m": 250.0,
            "semi_minor_m": 120.0,
            "orientation_deg": 10.0,
        },
        "geojson": "{}",
        "receivers_used": ["torino"],
        "cache_hit": False,
        "timings": {"queued_ms": 1.0, "inference_ms": 2.0, "end_to_end_ms": 3.0},
        "lineage": {"source_partition": 0, "source_offset": 7, "batch_id": "b", "batch_size": 1},
        "produced_at": datetime(2026, 1, 1, tzinfo=UTC),
    }
    decoded = localization_codec().decode(old_writer.encode(record))
    assert decoded.ellipse == Ellipse(0.95, 250.0, 120.0, 10.0, None)
    assert decoded.radii == () and decoded.lineage.source_offset == 7


@given(localizations)
def test_a_localization_written_before_quality_existed_decodes_as_fully_trusted(value):
    before_quality = older_schemas("Localization")[-1]  # v2: with radii, without quality
    assert "quality" not in {f["name"] for f in before_quality["fields"]}
    mapping = record_mapping(Localization, load_schema("Localization"))
    old_writer = Codec(
        before_quality,
        lambda loc: {k: v for k, v in mapping.to_record(loc).items() if k != "quality"},
        lambda r: r,
    )
    decoded = localization_codec().decode(old_writer.encode(value))
    assert decoded == dataclasses.replace(value, quality=1.0)


@given(deployments)
def test_deployment_round_trip(value):
    assert deployment_codec().decode(deployment_codec().encode(value)) == value


@given(statuses)
def test_status_round_trip(value):
    assert status_codec().decode(status_codec().encode(value)) == value


def test_header_carries_the_writer_fingerprint():
    data = capture_codec().encode(_sample_capture())
    assert data[2:HEADER_SIZE] == schema_fingerprint(load_schema("IqCapture"))
    fingerprints = {schema_fingerprint(load_schema(n)) for n in ("IqCapture", "Localization")}
    assert len(fingerprints) == 2


def _old_and_new_schemas():
    old = {
        "type": "record",
        "name": "Thing",
        "namespace": "org.heimdall.stream",
        "fields": [{"name": "id", "type": "string"}],
    }
    new = {**old, "fields": [*old["fields"], {"name": "colour", "type": "string", "default": "red"}]}
    return parse_schema(old), parse_schema(new)


@given(st.text(max_size=30))
def test_reader_with_an_added_defaulted_field_reads_old_data(identifier):
    old, new = _old_and_new_schemas()
    writer = Codec(old, lambda v: {"id": v}, lambda r: r)
    reader = Codec(new, lambda v: v, lambda r: r, older_schemas=[old])
    assert reader.decode(writer.encode(identifier)) == {"id": identifier, "colour": "red"}


def test_a_status_written_before_state_existed_decodes_as_applied():
    (v1,) = older_schemas("ModelStatus")
    # The fingerprint instances of the first version put on heimdall.model-status.
    assert schema_fingerprint(v1).hex() == "c187e64f56ef0e50"
    old_writer = Codec(v1, lambda record: record, lambda record: record)
    record = {
        "instance_id": "i-1",
        "model_name": "m",
        "generation": 4,
        "versions": [
            {"model_uri": "models:/m/4", "version": "4", "sha256": "ab", "weight": 1.0, "shadow": False}
        ],
        "error": None,
        "requested_generation": 4,
        "reported_at": datetime(2026, 1, 1, tzinfo=UTC),
    }
    decoded = status_codec().decode(old_writer.encode(record))
    assert decoded.state is ApplyState.APPLIED
    assert decoded.versions == (LoadedVersion("models:/m/4", "4", "ab", 1.0, False),)
    assert (decoded.generation, decoded.requested_generation, decoded.error) == (4, 4, None)


@dataclass(frozen=True)
class _Thing:
    id: str
    colour: SampleFormat


def _thing_schema(**changes):
    schema = {
        "type": "record",
        "name": "_Thing",
        "fields": [
            {"name": "id", "type": "string"},
            {"name": "colour", "type": {"type": "enum", "name": "SampleFormat", "symbols": ["CI16", "CF32"]}},
        ],
    }
    return parse_schema({**schema, **changes})


def test_a_dataclass_and_a_schema_that_disagree_are_refused_when_the_codec_is_built():
    assert Codec(_thing_schema(), *_mapping(_thing_schema())).encode(_Thing("a", SampleFormat.CF32))
    with pytest.raises(TypeError, match=r"only in the dataclass: \['colour'\]"):
        _mapping(_thing_schema(fields=[{"name": "id", "type": "string"}]))
    with pytest.raises(TypeError, match=r"_Thing.id: type <class 'str'> does not map to Avro type long"):
        _mapping(_thing_schema(fields=[{"name": "id", "type": "long"}, _thing_schema()["fields"][1]]))
    bad_enum = {"name": "colour", "type": {"type": "enum", "name": "SampleFormat", "symbols": ["CI16"]}}
    with pytest.raises(TypeError, match="differ from symbols"):
        _mapping(_thing_schema(fields=[{"name": "id", "type": "string"}, bad_enum]))


def _mapping(schema):
    mapping = record_mapping(_Thing, schema)
    return mapping.to_record, mapping.from_record


def test_each_shipped_schema_documents_every_field():
    for name in ("IqCapture", "Localization", "ModelDeployment", "ModelStatus", "GroundTruth"):
        schema = json.loads((REPO / "schemas" / f"{name}.avsc").read_text())
        assert schema["namespace"] == "org.heimdall.stream"
        assert schema.get("doc")

        def walk(record):
            for field in record["fields"]:
                assert field.get("doc"), f"{record['name']}.{field['name']} has no doc"
                inner = field["type"]
                if isinstance(inner, dict) and inner.get("type") == "array":
                    inner = inner["items"]
                if isinstance(inner, dict) and inner.get("type") == "record":
                    walk(inner)

        walk(schema)


def _sample_capture() -> IqCapture:
    return IqCapture(
        "cap-1",
        datetime(2026, 1, 1, tzinfo=UTC) + timedelta(microseconds=5),
        145.5e6,
        (ReceiverIq("torino", 45.0, 7.6, 50_000.0, SampleFormat.CI16, b"\x01\x00" * 400),),
    )


@given(st.integers(min_value=0, max_value=200))
@settings(max_examples=50)
def test_truncated_bytes_raise_decode_error(cut):
    data = capture_codec().encode(_sample_capture())
    cut = min(cut, len(data) - 1)
    with pytest.raises(DecodeError) as info:
        capture_codec().decode(data[:cut])
    assert info.value.reason in {"truncated", "corrupt", "bad_magic"}


@given(st.binary(max_size=300))
def test_garbage_raises_decode_error_and_nothing_else(data):
    try:
        capture_codec().decode(data)
    except DecodeError as exc:
        assert str(exc)
    # Random bytes that happen to decode are fine; any other exception fails the test.


def test_unknown_fingerprint_and_wrong_schema_are_named():
    data = capture_codec().encode(_sample_capture())
    with pytest.raises(DecodeError, match="unknown writer schema fingerprint") as info:
        capture_codec().decode(MAGIC + b"\x00" * 8 + data[HEADER_SIZE:])
    assert info.value.reason == "unknown_schema"
    status = status_codec().encode(ModelStatus("i", "m", 1, ()))
    with pytest.raises(DecodeError, match="written with schema ModelStatus, expected IqCapture") as info:
        capture_codec().decode(status)
    assert info.value.reason == "wrong_schema"
    with pytest.raises(DecodeError, match="not Avro single-object encoding"):
        capture_codec().decode(b"\x00\x01" + data[2:])
    with pytest.raises(DecodeError, match="trailing bytes"):
        capture_codec().decode(data + b"\x00")


def test_decoding_a_full_capture_copies_the_samples_once():
    samples = bytes(range(256)) * (40_000 // 256 + 1)
    rx = [ReceiverIq(f"r{i}", 45.0, 7.0, 50e3, SampleFormat.CI16, samples[:40_000]) for i in range(7)]
    data = capture_codec().encode(IqCapture("big", datetime(2026, 1, 1, tzinfo=UTC), 145e6, tuple(rx)))
    sample_bytes = 7 * 40_000
    tracemalloc.start()
    decoded = capture_codec().decode(data)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert decoded.receivers[6].samples == samples[:40_000]
    # One copy of the samples (into the bytes fields), plus small per-record overhead.
    assert sample_bytes <= peak < 1.2 * sample_bytes


def test_fastavro_reads_our_body_with_the_plain_schema():
    data = capture_codec().encode(_sample_capture())
    record = fastavro.schemaless_reader(io.BytesIO(data[HEADER_SIZE:]), load_schema("IqCapture"), None)
    assert record["capture_id"] == "cap-1"
