"""Live calibration through real Kafka: results joined with a ground-truth topic, scraped metrics,
the coverage alert evaluated on what was scraped, and bad truths counted by reason."""

from __future__ import annotations

import math
import shutil
import subprocess
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from confluent_kafka import Producer
from prometheus_client.parser import text_string_to_metric_families

from heimdall_stream.calibration.service import CalibrationService
from heimdall_stream.config import Settings
from heimdall_stream.geo import WGS84, ellipse_from_covariance
from heimdall_stream.lab.publisher import SimulationPlan, TruthPlan, publish
from heimdall_stream.network import load_network
from heimdall_stream.wire.codec import capture_codec, ground_truth_codec, localization_codec
from heimdall_stream.wire.messages import (
    ConfidenceRadius,
    Covariance,
    GroundTruth,
    IqCapture,
    Lineage,
    Localization,
    Timings,
)
from tests.conftest import unavailable
from tests.integration.conftest import ServiceThread, scrape, wait_for
from tests.integration.test_dashboard_metrics import CALIBRATOR_PREFIX, _base, _referenced

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "deploy" / "prometheus" / "alerts.yml"


class CalibratorThread(ServiceThread):
    """``heimdall-stream calibrate`` in this process, on its own /metrics port."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(CalibrationService(settings))

    def samples(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        """Every sample of the scraped /metrics, by name and labels."""
        assert self.error is None, self.error
        return {
            (s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(scrape(self.service.port))
            for s in family.samples
        }

    def value(self, name: str, **labels: str) -> float:
        return self.samples().get((name, frozenset(labels.items())), 0.0)

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.service.port}/readyz", timeout=5) as resp:
                return resp.status == 200
        except urllib.error.HTTPError:
            return False


@pytest.fixture
def start_calibrator() -> Iterator[Callable[[Settings], CalibratorThread]]:
    started: list[CalibratorThread] = []

    def start(settings: Settings) -> CalibratorThread:
        calibrator = CalibratorThread(settings)
        started.append(calibrator)
        wait_for(calibrator.ready, 60, "the calibrator is assigned both topics")
        return calibrator

    yield start
    for calibrator in started:
        calibrator.stop_event.set()
        calibrator.thread.join(30)
        assert not calibrator.thread.is_alive(), "the calibrator did not stop"


def _calibration_settings(settings: Settings, truth_topic: str) -> Settings:
    calibration = {"truth_topic": truth_topic, "host": "127.0.0.1", "port": 0}
    return settings.model_copy(update={"calibration": settings.calibration.model_copy(update=calibration)})


def test_the_stream_s_results_joined_with_ground_truth_give_coverage_and_error_per_version(
    make_settings, start_consumer, start_calibrator, new_topic
):
    settings = _calibration_settings(make_settings(), new_topic("truth", partitions=3))
    consumer = start_consumer(settings)
    calibrator = start_calibrator(settings)
    producer = Producer({"bootstrap.servers": settings.kafka.bootstrap_servers, "enable.idempotence": True})
    count = 12
    stats = publish(
        producer,
        settings.kafka.input_topic,
        load_network(),
        SimulationPlan(count=count, id_prefix=f"cal{uuid.uuid4().hex[:6]}"),
        truths=TruthPlan(settings.calibration.truth_topic, 1.0),
    )
    assert stats.truths == count
    # Bad input on the ground-truth topic: counted by reason, never stops the calibrator.
    capture = capture_codec().encode(IqCapture("x", datetime.now(UTC), 145e6, ()))
    for key, value in ((b"g", b"this is not an Avro record"), (b"x", capture)):
        producer.produce(settings.calibration.truth_topic, key=key, value=value)
    producer.flush(30)
    wait_for(
        lambda: (
            sum(v for (n, _), v in calibrator.samples().items() if n == "heimdall_calibration_matched_total")
            >= count
        ),
        120,
        "every truth joined with its result",
    )
    matched = {
        labels: v
        for (name, labels), v in calibrator.samples().items()
        if name == "heimdall_calibration_matched_total"
    }
    assert list(matched.values()) == [count]  # one version served them all
    version = dict(next(iter(matched)))
    assert version["model_version"] == "1" and consumer.metric(
        "heimdall_results_produced_total", model_version="1"
    )
    scored = calibrator.value("heimdall_calibration_scored_total", **version, confidence="0.95")
    hits = {
        c: calibrator.value("heimdall_calibration_hits_total", **version, confidence=c)
        for c in ("0.6827", "0.95")
    }
    assert (
        scored == count
        and calibrator.value("heimdall_calibration_scored_total", **version, confidence="0.6827") == count
    )
    assert 0 <= hits["0.6827"] <= hits["0.95"] <= count
    assert (
        calibrator.value("heimdall_calibration_coverage_ratio", **version, confidence="0.95")
        == hits["0.95"] / count
    )
    assert calibrator.value("heimdall_calibration_error_meters_count", **version) == count
    assert calibrator.value("heimdall_calibration_error_meters_sum", **version) > 0
    assert calibrator.value("heimdall_calibration_pending", side="truth") == 0
    # Every calibration series the dashboard and the alert rules name is one this process exports.
    exported = {_base(name) for name, _ in calibrator.samples()}
    referenced = {name for name in _referenced() if name.startswith(CALIBRATOR_PREFIX)}
    assert referenced and not {n for n in referenced if _base(n) not in exported}, sorted(referenced)
    wait_for(
        lambda: (
            calibrator.value("heimdall_calibration_bad_records_total", kind="truths", reason="bad_magic") == 1
            and calibrator.value(
                "heimdall_calibration_bad_records_total", kind="truths", reason="wrong_schema"
            )
            == 1
        ),
        60,
        "the bad truths counted by reason",
    )


def _synthetic_result(capture_id: str, version: str, now: datetime) -> Localization:
    cov = Covariance(1000.0, 500.0, 0.0)
    ellipse = ellipse_from_covariance(cov, 0.95, radius=2.9)
    return Localization(
        capture_id=capture_id,
        model_name="localization_model",
        model_version=version,
        latitude=45.0,
        longitude=7.6,
        covariance=cov,
        ellipse=ellipse,
        geojson="{}",
        receivers_used=("torino",),
        cache_hit=False,
        timings=Timings(0.0, 1.0, 50.0),
        lineage=Lineage(0, 0, "synthetic", 1),
        produced_at=now,
        radii=(ConfidenceRadius(0.6827, 1.4), ConfidenceRadius(0.95, 2.9)),
    )


def _truth_east(capture_id: str, sigmas: float, now: datetime) -> GroundTruth:
    """A truth ``sigmas`` east-sigmas (1000 m each) east of the synthetic estimate."""
    lon, lat, _ = WGS84.fwd(7.6, 45.0, 90.0, sigmas * 1000.0)
    return GroundTruth(capture_id, float(lat), float(lon), now, "test")


def test_coverage_below_90_percent_fires_the_alert_for_that_version_only(
    services, new_topic, start_calibrator, tmp_path
):
    promtool = shutil.which("promtool")
    if promtool is None:
        unavailable("promtool", "apt-get install prometheus")
    settings = Settings(
        kafka={"bootstrap_servers": services.kafka, "output_topic": new_topic("results", partitions=2)},
        calibration={"truth_topic": new_topic("truth", partitions=2), "host": "127.0.0.1", "port": 0},
    )
    calibrator = start_calibrator(settings)
    producer = Producer({"bootstrap.servers": services.kafka, "enable.idempotence": True})
    now = datetime.now(UTC)
    per_version = 120  # the alert judges a version on at least 100 scored truths an hour
    for version, outside_every in (("7", 0), ("8", 2)):  # version 8: every second truth outside
        for i in range(per_version):
            capture_id = f"v{version}-{i}"
            sigmas = 5.0 if outside_every and i % outside_every == 0 else 1.0
            producer.produce(
                settings.kafka.output_topic,
                key=capture_id.encode(),
                value=localization_codec().encode(_synthetic_result(capture_id, version, now)),
            )
            producer.produce(
                settings.calibration.truth_topic,
                key=capture_id.encode(),
                value=ground_truth_codec().encode(_truth_east(capture_id, sigmas, now)),
            )
    producer.flush(30)
    wait_for(
        lambda: all(
            calibrator.value(
                "heimdall_calibration_scored_total",
                model_name="localization_model",
                model_version=v,
                confidence="0.95",
            )
            == per_version
            for v in ("7", "8")
        ),
        120,
        "every synthetic truth scored",
    )
    coverage = {
        v: calibrator.value(
            "heimdall_calibration_coverage_ratio",
            model_name="localization_model",
            model_version=v,
            confidence="0.95",
        )
        for v in ("7", "8")
    }
    assert coverage == {"7": 1.0, "8": 0.5}
    # The alert rule, evaluated by promtool on the scraped counters taken as one hour's traffic
    # (repeated for two hours, so the hour-long window and the 15 minutes of `for` both fill).
    series = [
        {"series": _series(name, dict(labels)), "values": f"0+{value / 60:g}x120"}
        for (name, labels), value in calibrator.samples().items()
        if name in ("heimdall_calibration_hits_total", "heimdall_calibration_scored_total")
    ]
    alert = {
        "exp_labels": {"severity": "warning", "model_name": "localization_model", "model_version": "8"},
        "exp_annotations": {
            "summary": "Only 50% of known truths lie inside the 95 % ellipses of localization_model "
            "version 8",
            "runbook": "deploy/README.md#heimdallellipsecoveragelow",
        },
    }
    check = {"eval_time": "100m", "alertname": "HeimdallEllipseCoverageLow", "exp_alerts": [alert]}
    test = {"interval": "1m", "input_series": series, "alert_rule_test": [check]}
    test_file = tmp_path / "scraped_test.yml"
    test_file.write_text(
        yaml.safe_dump({"rule_files": [str(RULES)], "evaluation_interval": "1m", "tests": [test]})
    )
    result = subprocess.run(
        [promtool, "test", "rules", str(test_file)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # Bad truths on the topic are counted by reason and do not stop the calibrator.
    far = GroundTruth("far", 45.0, 200.0, now, "test")
    producer.produce(settings.calibration.truth_topic, key=b"far", value=ground_truth_codec().encode(far))
    producer.produce(settings.calibration.truth_topic, key=b"t", value=b"\xc3\x01short")
    producer.flush(30)
    wait_for(
        lambda: (
            calibrator.value("heimdall_calibration_bad_records_total", kind="truths", reason="bad_position")
            == 1
            and calibrator.value("heimdall_calibration_bad_records_total", kind="truths", reason="truncated")
            == 1
        ),
        60,
        "the bad truths counted by reason",
    )
    assert math.isclose(
        calibrator.value("heimdall_calibration_records_total", kind="truths"), 2 * per_version + 2
    )


def _series(name: str, labels: dict[str, Any]) -> str:
    inner = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    return f"{name}{{{inner}}}"
