"""train-reference registers self-describing models in MLflow; the registry cache checks sha256."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from heimdall_stream.errors import ModelLoadError
from heimdall_stream.lab.reference import train_and_register
from heimdall_stream.lab.shift import VARIANTS
from heimdall_stream.models.contract import CONTRACT_KEY, parse_contract
from heimdall_stream.models.inference import load_model
from heimdall_stream.models.registry import SHA_TAG, ModelRegistry
from heimdall_stream.network import load_network

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def registered(mlflow_uri):
    tag = uuid.uuid4().hex[:6]
    features, report = train_and_register(
        mlflow_uri,
        load_network(),
        n_train=800,
        features_name=f"ref_features_{tag}",
        iq_name=f"ref_iq_{tag}",
        shift_per_variant=8,  # the suite's plumbing; its figures need train-reference's defaults
    )
    return features, report, f"ref_iq_{tag}"


def test_both_models_are_registered_with_alias_sha_and_report(mlflow_uri, registered):
    features, report, iq_name = registered
    client = MlflowClient(mlflow_uri)
    version = client.get_model_version_by_alias(features.name, "champion")
    assert version.tags[SHA_TAG] == features.sha256
    run = client.get_run(version.run_id)
    assert run.data.metrics["coverage_95"] == pytest.approx(report.coverage_95)
    assert run.data.metrics["median_error_m"] > 0
    local = mlflow.artifacts.download_artifacts(
        run_id=version.run_id, artifact_path="evaluation.json", tracking_uri=mlflow_uri
    )
    logged = json.loads(Path(local).read_text())
    assert logged["n_train"] == 800
    # The shift suite: every variant evaluated, as metrics and in the report.
    assert [row["variant"] for row in logged["shift"]] == list(VARIANTS)
    assert all(row["n"] == 8 for row in logged["shift"])
    carrier = next(row for row in report.shift if row["variant"] == "carrier")
    assert run.data.metrics["shift.carrier.coverage_95"] == pytest.approx(carrier["coverage_95"])
    iq = client.get_model_version_by_alias(iq_name, "benchmark")
    assert SHA_TAG in iq.tags


def test_fetched_models_load_and_describe_themselves(mlflow_uri, registered, tmp_path):
    features, _report, iq_name = registered
    registry = ModelRegistry(mlflow_uri, tmp_path)
    fetched = registry.fetch(f"models:/{features.name}@champion")
    assert fetched.sha256 == features.sha256 and not fetched.from_cache
    model = load_model(
        fetched.path, name=fetched.name, version=fetched.version, uri=fetched.uri, sha256=fetched.sha256
    )
    assert model.contract.input_kind == "features" and not model.contract.benchmark_only
    stored = json.loads(model.session.get_modelmeta().custom_metadata_map[CONTRACT_KEY])
    assert 0 < stored["evaluation"]["coverage_68"] < 1
    # the power grid's prior: the box of the training truths, in metres of the network frame
    region = stored["prior_region_enu_m"]
    assert region["east_m"][0] < 0 < region["east_m"][1] and region["north_m"][0] < 0 < region["north_m"][1]
    iq = registry.fetch(f"models:/{iq_name}/1")
    iq_model = load_model(iq.path, name=iq.name, version=iq.version, uri=iq.uri, sha256=iq.sha256)
    assert iq_model.contract.input_kind == "iq" and iq_model.contract.benchmark_only
    assert iq.path.stat().st_size > 4_000_000, "the IQ benchmark model should be several MB"
    assert (
        "BENCHMARK ONLY"
        in parse_contract(iq_model.session.get_modelmeta().custom_metadata_map[CONTRACT_KEY]).description
    )


def test_registry_uri_forms_and_errors(mlflow_uri, registered, tmp_path):
    features, _report, _iq = registered
    registry = ModelRegistry(mlflow_uri, tmp_path)
    by_alias = registry.fetch(f"models:/{features.name}@champion")
    by_version = registry.fetch(f"models:/{features.name}/{features.version}")
    assert by_alias.path == by_version.path
    with pytest.raises(ModelLoadError, match="bad model URI"):
        registry.fetch("runs:/abc/model")
    with pytest.raises(ModelLoadError, match="registry has no"):
        registry.fetch(f"models:/{features.name}@no-such-alias")


def test_a_tampered_cache_entry_is_never_loaded(mlflow_uri, registered, tmp_path):
    features, _report, _iq = registered
    registry = ModelRegistry(mlflow_uri, tmp_path)
    first = registry.fetch(f"models:/{features.name}@champion")
    first.path.write_bytes(first.path.read_bytes()[:-10] + b"0123456789")
    again = registry.fetch(f"models:/{features.name}@champion")
    assert again.sha256 == features.sha256  # fetched anew, not loaded tampered


def test_unreachable_registry_serves_the_last_known_good_copy(registered, mlflow_uri, tmp_path):
    features, _report, _iq = registered
    uri = f"models:/{features.name}@champion"
    ModelRegistry(mlflow_uri, tmp_path).fetch(uri)
    offline = ModelRegistry("http://127.0.0.1:9", tmp_path)  # nothing listens on port 9
    fetched = offline.fetch(uri)
    assert fetched.from_cache and fetched.sha256 == features.sha256
    with pytest.raises(ModelLoadError, match="unreachable"):
        ModelRegistry("http://127.0.0.1:9", tmp_path / "empty").fetch(uri)
