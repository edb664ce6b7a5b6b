"""docker-compose.yml parses and names the services a laptop stack needs (no engine needed)."""

from __future__ import annotations

from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def test_compose_file_names_the_stack_services_with_health_checks():
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"kafka", "redis", "mlflow", "prometheus", "grafana"} <= set(services)
    assert services["kafka"]["image"].startswith("apache/kafka:4.")
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    for name in ("kafka", "redis", "mlflow", "prometheus", "grafana"):
        assert "healthcheck" in services[name], name
    assert set(compose["volumes"]) >= {"kafka-data", "redis-data", "mlflow-data"}
