"""The real BatchProcessor on real (tiny) ONNX models and the in-memory store, without Kafka.

Routing, validation, dedup (store, recent-id memory, in-batch), the result cache, shadows and
the bisection of poisonous captures, all as production runs them.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
import shapely.geometry
from prometheus_client import CollectorRegistry

from heimdall_stream.config import LimitsSettings
from heimdall_stream.geojson import feature_of_kind
from heimdall_stream.lab.faults import FAULTS
from heimdall_stream.lab.simulator import IqSimulator, LinkModel
from heimdall_stream.metrics import Metrics
from heimdall_stream.models.inference import load_model
from heimdall_stream.models.registry import file_sha256
from heimdall_stream.models.routing import ModelSet, route_point
from heimdall_stream.processing.cache import ResultCache
from heimdall_stream.processing.dedup import Deduplicator
from heimdall_stream.processing.processor import BatchProcessor
from heimdall_stream.processing.records import InputRecord
from heimdall_stream.processing.store import InMemoryStore
from heimdall_stream.wire.codec import capture_codec, localization_codec
from tests.helpers import NETWORK, tiny_features_model

LIMITS = LimitsSettings()


class FakeClock:
    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _load(tmp_path_factory, version: str, nan_below_receivers: int | None = 5):
    path = tmp_path_factory.mktemp(f"m{version}") / "model.onnx"
    path.write_bytes(tiny_features_model(nan_below_receivers=nan_below_receivers))
    return load_model(
        path, name="tiny", version=version, uri=f"models:/tiny/{version}", sha256=file_sha256(path)
    )


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return _load(tmp_path_factory, "1")


@pytest.fixture(scope="module")
def model2(tmp_path_factory):
    return _load(tmp_path_factory, "2")


def _processor(models: ModelSet, store=None, clock=None, wall=None, recent_ids: int = 1000):
    metrics = Metrics(CollectorRegistry())
    store = store or InMemoryStore()
    processor = BatchProcessor(
        lambda: models,
        Deduplicator(store, recent_ids, metrics),
        ResultCache(store),
        metrics,
        limits=LIMITS,
        confidence=0.95,
        batch_prefix="test",
        clock=clock or FakeClock(1.0),
        wall=wall or (lambda: datetime.now(UTC)),
    )
    return processor, metrics


def _metric(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels or None) or 0.0


def _records(values, first_offset: int = 100):
    return [
        InputRecord("in", i % 3, first_offset + i, f"k{i}".encode(), v, 0.0) for i, v in enumerate(values)
    ]


def _captures(n, offline=0.0, seed=0, prefix=None):
    sim = IqSimulator(NETWORK, LinkModel(offline_probability=offline), seed=seed)
    captures = [sim.generate(i).capture for i in range(n)]
    if prefix:
        captures = [dataclasses.replace(c, capture_id=f"{prefix}-{i}") for i, c in enumerate(captures)]
    return captures


def _encoded(captures):
    return _records([capture_codec().encode(c) for c in captures])


def test_every_fault_kind_becomes_a_dead_letter_with_its_reason(model):
    processor, metrics = _processor(ModelSet.single(model))
    base = _captures(1)[0]
    rng = np.random.default_rng(0)
    faults = {name: make(base, rng) for name, make in FAULTS.items()}
    scored = processor.process(_records([capture_codec().encode(base), *faults.values()]))
    assert [r.record.offset for r in scored.results] == [100]
    reasons = {letter.record.key: letter.reason for letter in scored.dead_letters}
    names = list(faults)
    by_name = {names[i]: reasons[f"k{i + 1}".encode()] for i in range(len(names))}
    assert by_name["wrong_schema"] == "wrong_schema"
    assert by_name["truncated_iq"] == "truncated_iq"
    assert by_name["nan_samples"] == "non_finite"
    assert by_name["unknown_receiver"] == "unknown_receiver"
    assert by_name["oversized"] == "oversized"
    assert by_name["garbage"] in {"bad_magic", "truncated", "corrupt", "unknown_schema"}
    assert all(letter.message for letter in scored.dead_letters)
    processor.after_commit(scored)
    assert _metric(metrics, "heimdall_dead_letters_total", reason="oversized") == 1


def test_results_carry_geometry_lineage_and_timings(model):
    now = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=10)
    processor, metrics = _processor(ModelSet.single(model), clock=FakeClock(1.0), wall=lambda: now)
    records = _encoded(_captures(4))
    scored = processor.process(records)
    assert not scored.dead_letters and len(scored.results) == 4
    for result, record in zip(scored.results, records, strict=True):
        loc = localization_codec().decode(result.value)
        assert loc.lineage.source_partition == record.partition and loc.lineage.source_offset == record.offset
        assert loc.lineage.batch_id == f"{scored.batch_id}-v1" and loc.lineage.batch_size == 4
        assert loc.model_name == "tiny" and loc.model_version == "1" and not loc.cache_hit
        polygon = shapely.geometry.shape(feature_of_kind(loc.geojson, "ellipse")["geometry"])
        assert polygon.is_valid and polygon.contains(shapely.geometry.Point(loc.longitude, loc.latitude))
        assert loc.ellipse.confidence == 0.95 and 0 <= loc.ellipse.orientation_deg < 180
        assert loc.timings.queued_ms == pytest.approx(1000.0)  # consumed at 0 s, inferred at 1 s
        # The tiny model puts every transmitter 1.5 km east, 2.5 km south of the reference.
        east, north = model.contract.frame.to_enu(loc.latitude, loc.longitude)
        assert float(east) == pytest.approx(1500, abs=1) and float(north) == pytest.approx(-2500, abs=1)
    processor.after_commit(scored)
    assert _metric(metrics, "heimdall_results_produced_total", model_version="1") == 4
    assert _metric(metrics, "heimdall_batch_size_count", model_version="1") == 1


def test_weighted_split_is_sticky_and_never_mixes_versions_in_a_batch(model, model2):
    models = ModelSet("tiny", 3, ((model, 0.5), (model2, 0.5)))
    processor, metrics = _processor(models)
    captures = _captures(40, prefix="split")
    scored = processor.process(_encoded(captures))
    assert len(scored.results) == 40
    for result in scored.results:
        expected = "2" if route_point(result.localization.capture_id) >= 0.5 else "1"
        assert result.localization.model_version == expected
        assert result.localization.lineage.batch_id.endswith(f"-v{expected}")
    assert {stats.version for stats in scored.versions} == {"1", "2"}
    processor.after_commit(scored)
    produced = [_metric(metrics, "heimdall_results_produced_total", model_version=v) for v in ("1", "2")]
    assert sum(produced) == 40 and all(p > 0 for p in produced)


def test_repeats_are_caught_by_the_store_by_memory_and_within_a_batch(model):
    clock = FakeClock(0.0)
    store = InMemoryStore(dedup_ttl_s=10, clock=clock)
    processor, metrics = _processor(ModelSet.single(model), store=store, clock=clock)
    captures = _captures(3, prefix="dup")
    in_batch = processor.process(_encoded([captures[0], captures[0], captures[1]]))
    assert sorted(r.localization.capture_id for r in in_batch.results) == ["dup-0", "dup-1"]
    assert _metric(metrics, "heimdall_dedup_hits_total") == 1
    processor.after_commit(in_batch)

    again = processor.process(_encoded([captures[1], captures[2]]))  # dup-1 is marked done
    assert [r.localization.capture_id for r in again.results] == ["dup-2"]
    assert _metric(metrics, "heimdall_dedup_hits_total") == 2
    assert _metric(metrics, "heimdall_dedup_memory_hits_total") == 0
    processor.after_commit(again)

    clock.now = 60.0  # every mark in the store has expired: only the in-process memory remembers
    forgotten = processor.process(_encoded(captures))
    assert not forgotten.results
    assert _metric(metrics, "heimdall_dedup_memory_hits_total") == 3


def test_a_capture_is_marked_done_only_after_the_commit(model):
    processor, _ = _processor(ModelSet.single(model))
    records = _encoded(_captures(2, prefix="late"))
    first = processor.process(records)
    processor.discard(first)  # its transaction aborted: no after_commit, claims released
    again = processor.process(records)
    assert len(first.results) == len(again.results) == 2


def test_cache_hits_skip_inference_and_are_counted(model):
    processor, metrics = _processor(ModelSet.single(model))
    captures = _captures(3, prefix="c1")
    first = processor.process(_encoded(captures))
    processor.after_commit(first)
    same_input = [dataclasses.replace(c, capture_id=f"c2-{i}") for i, c in enumerate(captures)]
    second = processor.process(_encoded(same_input))
    assert all(r.localization.cache_hit for r in second.results)
    assert [r.localization.latitude for r in second.results] == [
        r.localization.latitude for r in first.results
    ]
    processor.after_commit(second)
    assert _metric(metrics, "heimdall_cache_hits_total", model_version="1") == 3
    assert _metric(metrics, "heimdall_cache_misses_total", model_version="1") == 3
    assert _metric(metrics, "heimdall_cache_hit_ratio") == pytest.approx(0.5)


def test_identical_inputs_in_one_batch_are_inferred_once(model):
    processor, _ = _processor(ModelSet.single(model))
    capture = _captures(1)[0]
    scored = processor.process(
        _encoded([dataclasses.replace(capture, capture_id=f"copy-{i}") for i in range(3)])
    )
    assert scored.versions[0].cache_hits == 2
    assert [r.localization.cache_hit for r in scored.results] == [False, True, True]


def test_bisection_isolates_poisonous_captures_and_keeps_the_rest(model):
    processor, _ = _processor(ModelSet.single(model))
    full = _captures(6)
    sparse = [dataclasses.replace(c, receivers=c.receivers[:3]) for c in _captures(2, seed=9)]
    scored = processor.process(_encoded([full[0], sparse[0], *full[1:4], sparse[1], *full[4:]]))
    assert sorted(d.record.offset for d in scored.dead_letters) == [101, 105]
    assert {d.reason for d in scored.dead_letters} == {"inference"}
    assert len(scored.results) == 6


def test_shadows_are_scored_and_compared_but_never_emitted(model, model2):
    processor, metrics = _processor(ModelSet("tiny", 1, ((model, 1.0),), (model2,)))
    captures = _encoded(_captures(5, prefix="shadow"))
    aborted = processor.process(captures)
    processor.discard(aborted)  # its transaction aborted: the batch runs again
    scored = processor.process(captures)
    assert {r.localization.model_version for r in scored.results} == {"1"} and len(scored.results) == 5
    assert len(scored.shadows) == 1 and len(scored.shadows[0].distances_m) == 5
    # Counted once, after the commit: not when scored, and not for the aborted attempt.
    assert not _metric(metrics, "heimdall_shadow_position_delta_meters_count", model_version="2")
    processor.after_commit(scored)
    assert _metric(metrics, "heimdall_shadow_position_delta_meters_count", model_version="2") == 5
    # Same graph, same answer: the shadow sits on top of its primary.
    assert _metric(metrics, "heimdall_shadow_position_delta_meters_sum", model_version="2") == pytest.approx(
        0.0, abs=1e-3
    )
    assert _metric(metrics, "heimdall_shadow_ellipse_overlap_count", model_version="2") == 5
    # ... and the same ellipse: both went through the same consistency check (widened alike).
    assert _metric(metrics, "heimdall_shadow_ellipse_overlap_sum", model_version="2") == pytest.approx(5.0)


def test_cache_keys_depend_on_the_input_and_the_model(model, tmp_path_factory):
    captures = _captures(2)
    keys = model.prepare(captures).cache_keys
    assert keys[0] != keys[1]
    assert model.prepare(captures).cache_keys == keys
    other = _load(tmp_path_factory, "other", nan_below_receivers=4)
    assert other.prepare(captures).cache_keys != keys


def test_doubtful_results_carry_their_quality_widened_and_are_counted(model):
    # The tiny model's contract says its training features had mean 0 and std 1: every real
    # capture (powers around -70 dBFS) lies far outside that, so every result is doubtful.
    processor, metrics = _processor(ModelSet.single(model))
    scored = processor.process(_encoded(_captures(3, prefix="doubtful")))
    for result in scored.results:
        loc = localization_codec().decode(result.value)
        assert 0.0 < loc.quality < 0.5
        # The model says σ = 2000 m east; the record carries it widened by 1 / quality (≤ 4×).
        assert loc.covariance.sigma_east_m == pytest.approx(2000.0 * min(1 / loc.quality, 4.0), rel=1e-6)
    processor.after_commit(scored)
    assert _metric(metrics, "heimdall_doubtful_results_total", model_version="1") == 3
