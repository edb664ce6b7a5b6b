"""Every metric named in the Grafana dashboard and the alert rules is exported by a live process.

The consumer's series are checked here; the calibrator's (``heimdall_calibration_*``, another
process) in test_calibration.py against a live calibrator.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import read_topic, scrape, send_captures

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
SUFFIXES = ("_bucket", "_sum", "_count", "_total", "_created")
CALIBRATOR_PREFIX = "heimdall_calibration_"  # exported by `heimdall-stream calibrate`, not the consumer


def _referenced() -> set[str]:
    exprs = [
        t["expr"]
        for p in json.loads((REPO / "deploy/grafana/dashboards/heimdall-stream.json").read_text())["panels"]
        for t in p["targets"]
    ]
    rules = yaml.safe_load((REPO / "deploy/prometheus/alerts.yml").read_text())
    exprs += [r["expr"] for g in rules["groups"] for r in g["rules"]]
    return {name for expr in exprs for name in re.findall(r"\b(heimdall_[a-z_]+)\b", expr)}


def test_dashboard_and_rules_only_use_exported_metrics(make_settings, start_consumer):
    settings = make_settings()
    consumer = start_consumer(settings)
    send_captures(settings, 12, malformed_fraction=0.5, seed=8)
    read_topic(settings.kafka.bootstrap_servers, settings.kafka.output_topic, expected=12)
    text = scrape(consumer.service.port)
    consumer.stop()
    # A labelled series appears only once observed (shadows, rejections); its family is
    # declared from the start, so compare base names: the family, without sample suffixes.
    exported = {family.name for family in text_string_to_metric_families(text)}
    ours = {name for name in _referenced() if not name.startswith(CALIBRATOR_PREFIX)}
    missing = sorted(name for name in ours if _base(name) not in exported)
    assert not missing, f"referenced but not exported: {missing}"


def _base(name: str) -> str:
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name
