"""The pure pipeline: decode, validate, infer with bisection, build results (tiny ONNX models)."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
import shapely.geometry

from heimdall_stream.config import LimitsSettings
from heimdall_stream.lab.faults import FAULTS
from heimdall_stream.lab.simulator import IqSimulator, LinkModel
from heimdall_stream.models.inference import file_sha256, load_model
from heimdall_stream.processing.pipeline import InputRecord, complete_batch, decode_and_validate
from heimdall_stream.wire.codec import capture_codec, localization_codec
from tests.helpers import NETWORK, tiny_features_model

LIMITS = LimitsSettings()


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("m") / "model.onnx"
    path.write_bytes(tiny_features_model(nan_below_receivers=5))
    return load_model(path, name="tiny", version="1", uri="models:/tiny/1", sha256=file_sha256(path))


def _records(values):
    return [InputRecord("in", i % 3, 100 + i, f"k{i}".encode(), v, 0.0) for i, v in enumerate(values)]


def _captures(n, offline=0.0, seed=0):
    sim = IqSimulator(NETWORK, LinkModel(offline_probability=offline), seed=seed)
    return [sim.generate(i).capture for i in range(n)]


def _run(model, captures, cache=None, *, batch_id="b", timer=lambda: 0.0, now=None):
    """Decode, validate and complete one batch; return the outcome."""
    good, bad = decode_and_validate(
        _records([capture_codec().encode(c) for c in captures]), model.contract, LIMITS
    )
    assert not bad
    prepared = model.prepare([g.capture for g in good])
    return complete_batch(
        good,
        prepared,
        cache or {},
        model=model,
        confidence=0.95,
        batch_id=batch_id,
        timer=timer,
        wall_now=lambda: now or datetime.now(UTC),
    )


def test_every_fault_kind_becomes_a_dead_letter_with_its_reason(model):
    base = _captures(1)[0]
    rng = np.random.default_rng(0)
    faults = {name: make(base, rng) for name, make in FAULTS.items()}
    records = _records([capture_codec().encode(base), *faults.values()])
    good, bad = decode_and_validate(records, model.contract, LIMITS)
    assert [g.record.offset for g in good] == [100]
    reasons = {letter.record.key: letter.reason for letter in bad}
    names = list(faults)
    by_name = {names[i]: reasons[f"k{i + 1}".encode()] for i in range(len(names))}
    assert by_name["wrong_schema"] == "wrong_schema"
    assert by_name["truncated_iq"] == "truncated_iq"
    assert by_name["nan_samples"] == "non_finite"
    assert by_name["unknown_receiver"] == "unknown_receiver"
    assert by_name["oversized"] == "oversized"
    assert by_name["garbage"] in {"bad_magic", "truncated", "corrupt", "unknown_schema"}
    assert all(letter.message for letter in bad)


def test_results_carry_geometry_lineage_and_timings(model):
    records = _records([capture_codec().encode(c) for c in _captures(4)])
    outcome = _run(
        model,
        _captures(4),
        batch_id="b-1",
        timer=lambda: 1.0,
        now=datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=10),
    )
    assert not outcome.dead_letters and len(outcome.results) == 4
    for result, record in zip(outcome.results, records, strict=True):
        loc = localization_codec().decode(result.value)
        assert loc.lineage.source_partition == record.partition and loc.lineage.source_offset == record.offset
        assert loc.lineage.batch_id == "b-1" and loc.lineage.batch_size == 4
        assert loc.model_name == "tiny" and loc.model_version == "1" and not loc.cache_hit
        feature = json.loads(loc.geojson)
        polygon = shapely.geometry.shape(feature["geometry"])
        assert polygon.is_valid and polygon.contains(shapely.geometry.Point(loc.longitude, loc.latitude))
        assert loc.ellipse.confidence == 0.95 and 0 <= loc.ellipse.orientation_deg < 180
        assert loc.timings.queued_ms == pytest.approx(1000.0)
        # The tiny model puts every transmitter 1.5 km east, 2.5 km south of the reference.
        east, north = model.contract.frame.to_enu(loc.latitude, loc.longitude)
        assert float(east) == pytest.approx(1500, abs=1) and float(north) == pytest.approx(-2500, abs=1)


def test_cache_hits_skip_inference(model):
    captures = _captures(3)
    first = _run(model, captures, batch_id="a")
    second = _run(model, captures, {r.cache_key: r.prediction for r in first.results})
    assert second.cache_hits == 3
    assert all(localization_codec().decode(r.value).cache_hit for r in second.results)
    assert [r.localization.latitude for r in second.results] == [
        r.localization.latitude for r in first.results
    ]


def test_bisection_isolates_poisonous_captures_and_keeps_the_rest(model):
    full = _captures(6)
    sparse = [dataclasses.replace(c, receivers=c.receivers[:3]) for c in _captures(2, seed=9)]
    outcome = _run(model, [full[0], sparse[0], *full[1:4], sparse[1], *full[4:]])
    assert sorted(d.record.offset for d in outcome.dead_letters) == [101, 105]
    assert {d.reason for d in outcome.dead_letters} == {"inference"}
    assert len(outcome.results) == 6


def test_cache_keys_depend_on_the_input_and_the_model(model, tmp_path):
    captures = _captures(2)
    keys = model.prepare(captures).cache_keys
    assert keys[0] != keys[1]
    assert model.prepare(captures).cache_keys == keys
    other_path = tmp_path / "other.onnx"
    other_path.write_bytes(tiny_features_model(nan_below_receivers=4))
    other = load_model(other_path, name="tiny", version="2", uri="u", sha256=file_sha256(other_path))
    assert other.prepare(captures).cache_keys != keys


def test_identical_inputs_in_one_batch_are_inferred_once(model):
    capture = _captures(1)[0]
    outcome = _run(model, [dataclasses.replace(capture, capture_id=f"copy-{i}") for i in range(3)])
    assert outcome.cache_hits == 2
    assert [r.localization.cache_hit for r in outcome.results] == [False, True, True]
