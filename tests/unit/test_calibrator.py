"""The calibrator without Kafka: records in, heimdall_calibration_* metrics out; bad input counted."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import CollectorRegistry

from heimdall_stream.calibration.calibrator import Calibrator
from heimdall_stream.calibration.metrics import CalibrationMetrics
from heimdall_stream.lab.publisher import ground_truth, has_ground_truth
from heimdall_stream.wire.codec import (
    Codec,
    capture_codec,
    ground_truth_codec,
    localization_codec,
    older_schemas,
)
from heimdall_stream.wire.messages import GroundTruth, IqCapture
from tests.unit.test_calibration_coverage import result, truth_at

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def calibrator() -> tuple[Calibrator, CollectorRegistry]:
    registry = CollectorRegistry()
    metrics = CalibrationMetrics(registry, coverage_window=100)
    return (
        Calibrator(
            metrics, confidences=(0.6827, 0.95), window_s=600.0, max_pending=1000, wall_clock=NOW.timestamp
        ),
        registry,
    )


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


def truth(capture_id: str, lat: float, lon: float, when: datetime = NOW) -> bytes:
    return ground_truth_codec().encode(GroundTruth(capture_id, lat, lon, when, "test"))


def test_joined_results_give_coverage_and_error_per_version():
    cal, registry = calibrator()
    base = result()
    cov = base.covariance
    # version 1: truths at Mahalanobis 1.0 (inside both) and 2.0 (inside 95 % only); version 2: at 4.0
    for i, (version, distance) in enumerate([("1", 1.0), ("1", 2.0), ("2", 4.0)]):
        loc = dataclasses.replace(base, capture_id=f"c{i}", model_version=version, produced_at=NOW)
        lat, lon = truth_at(loc.latitude, loc.longitude, cov, 0.3 * i, distance)
        cal.on_result(localization_codec().encode(loc))
        cal.on_truth(f"c{i}".encode(), truth(f"c{i}", lat, lon))
    v1 = {"model_name": "m", "model_version": "1"}
    assert value(registry, "heimdall_calibration_matched_total", **v1) == 2
    assert value(registry, "heimdall_calibration_scored_total", **v1, confidence="0.95") == 2
    assert value(registry, "heimdall_calibration_hits_total", **v1, confidence="0.95") == 2
    assert value(registry, "heimdall_calibration_hits_total", **v1, confidence="0.6827") == 1
    assert value(registry, "heimdall_calibration_coverage_ratio", **v1, confidence="0.6827") == 0.5
    v2 = {"model_name": "m", "model_version": "2"}
    assert value(registry, "heimdall_calibration_coverage_ratio", **v2, confidence="0.95") == 0.0
    assert value(registry, "heimdall_calibration_error_meters_count", **v1) == 2
    assert value(registry, "heimdall_calibration_mahalanobis_distance_bucket", **v2, le="6.0") == 1
    assert value(registry, "heimdall_calibration_mahalanobis_distance_bucket", **v2, le="3.0") == 0
    assert value(registry, "heimdall_calibration_pending", side="result") == 0


def test_bad_records_on_the_truth_topic_are_counted_with_a_reason():
    cal, registry = calibrator()
    capture = capture_codec().encode(IqCapture("x", NOW, 145e6, ()))
    cases = {
        "bad_magic": (b"k", b"not avro at all"),
        "truncated": (b"k", b"\xc3\x01"),
        "wrong_schema": (b"x", capture),
        "bad_position": (b"p", truth("p", 95.0, 7.0)),
        "bad_time": (b"f", truth("f", 45.0, 7.0, NOW + timedelta(days=1))),
        "key_mismatch": (b"other", truth("k", 45.0, 7.0)),
    }
    for key, raw in cases.values():
        cal.on_truth(key, raw, "truths/0/1")
    cal.on_truth(None, None)  # a tombstone
    for reason in cases:
        assert value(registry, "heimdall_calibration_bad_records_total", kind="truths", reason=reason) == 1, (
            reason
        )
    assert value(registry, "heimdall_calibration_bad_records_total", kind="truths", reason="empty") == 1
    assert value(registry, "heimdall_calibration_records_total", kind="truths") == len(cases) + 1
    assert cal.join.pending("truth") == 0
    cal.on_result(b"\xc3\x01" + b"\x00" * 20)
    assert (
        value(registry, "heimdall_calibration_bad_records_total", kind="results", reason="unknown_schema")
        == 1
    )


def test_a_result_written_before_results_carried_their_radius_is_counted_not_scored():
    v1 = older_schemas("Localization")[0]  # the first version: neither radii nor quality
    record = dataclasses.replace(result(), produced_at=NOW)
    old_writer = Codec(v1, lambda r: r, lambda r: r)
    body = {k: v for k, v in json.loads(json.dumps(dataclasses.asdict(record), default=str)).items()}
    body.pop("radii")
    body.pop("quality")
    body["ellipse"].pop("radius")
    body["receivers_used"] = []
    body["produced_at"] = NOW
    decoded = localization_codec().decode(old_writer.encode(body))
    assert decoded.ellipse.radius is None and decoded.radii == ()
    cal, registry = calibrator()
    cal.on_result(old_writer.encode(body))
    cal.on_truth(b"c", truth("c", 45.0, 7.6))
    version = {"model_name": "m", "model_version": "1"}
    assert value(registry, "heimdall_calibration_matched_total", **version) == 1
    assert value(registry, "heimdall_calibration_unscorable_total", **version, reason="no_radius") == 1
    assert value(registry, "heimdall_calibration_scored_total", **version, confidence="0.95") == 0


def test_an_unmatched_truth_expires_on_event_time_and_is_counted():
    cal, registry = calibrator()
    cal.on_truth(b"old", truth("old", 45.0, 7.0, NOW - timedelta(seconds=700)))
    loc = dataclasses.replace(result(), capture_id="new", produced_at=NOW)
    cal.on_result(localization_codec().encode(loc))
    assert value(registry, "heimdall_calibration_unmatched_total", side="truth", reason="expired") == 1
    assert value(registry, "heimdall_calibration_pending", side="result") == 1
    assert value(registry, "heimdall_calibration_watermark_seconds") == pytest.approx(NOW.timestamp())


def test_the_simulator_publishes_ground_truth_for_a_sticky_fraction_of_captures():
    ids = [f"cap-0-{i}".encode() for i in range(4000)]
    chosen = [i for i in ids if has_ground_truth(i, 0.25)]
    assert 0.22 < len(chosen) / len(ids) < 0.28
    assert chosen == [i for i in ids if has_ground_truth(i, 0.25)]
    assert not any(has_ground_truth(i, 0.0) for i in ids) and all(has_ground_truth(i, 1.0) for i in ids)
    record = {"capture_id": "c", "latitude": 45.0, "longitude": 7.5, "captured_at": NOW.isoformat()}
    decoded = ground_truth_codec().decode(ground_truth(record, "simulator"))
    assert decoded == GroundTruth("c", 45.0, 7.5, NOW, "simulator")
