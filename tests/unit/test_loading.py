"""The one model-loading path: fetch from a source, load with the settings, warm up at batch size."""

from __future__ import annotations

import pytest

from heimdall_stream.config import Settings
from heimdall_stream.errors import ModelContractError, RegistryUnavailableError
from heimdall_stream.models import inference
from heimdall_stream.models.loading import load_version
from heimdall_stream.models.registry import FetchedModel, file_sha256
from tests.helpers import features_contract, tiny_features_model


class StandInRegistry:
    """Serves one local file as every URI, and records how it was asked."""

    def __init__(self, path, *, from_cache=False, error=None):
        self.path, self.from_cache, self.error = path, from_cache, error
        self.calls = []

    def fetch(self, uri, *, stale_alias_ok=True):
        self.calls.append((uri, stale_alias_ok))
        if self.error is not None:
            raise self.error
        return FetchedModel(uri, "tiny", "7", self.path, file_sha256(self.path), self.from_cache)


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(tiny_features_model())
    return path


def _settings():
    """Settings that differ from the defaults where the loading path reads them."""
    return Settings.model_validate(
        {"model": {"intra_op_threads": 2, "inter_op_threads": 1}, "batching": {"max_batch_size": 5}}
    )


def test_loads_with_the_configured_threads_and_warms_up_at_the_serving_batch_size(model_file, monkeypatch):
    warmed = []
    monkeypatch.setattr(inference.LoadedModel, "warm_up", lambda self, size=1: warmed.append(size))
    registry = StandInRegistry(model_file, from_cache=True)
    model, fetched = load_version(registry, "models:/tiny@champion", _settings())
    assert registry.calls == [("models:/tiny@champion", True)]
    assert (model.name, model.version, model.uri) == ("tiny", "7", "models:/tiny@champion")
    assert model.sha256 == file_sha256(model_file) and fetched.from_cache
    assert model.contract.input_kind == "features"
    options = model.session.get_session_options()
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (2, 1)
    assert warmed == [5]


def test_a_stale_alias_refusal_is_passed_to_the_source(model_file):
    registry = StandInRegistry(model_file)
    load_version(registry, "models:/tiny/7", _settings(), stale_alias_ok=False)
    assert registry.calls == [("models:/tiny/7", False)]


def test_fetch_and_contract_errors_reach_the_caller(model_file, tmp_path):
    unavailable = RegistryUnavailableError("registry down")
    with pytest.raises(RegistryUnavailableError, match="registry down"):
        load_version(StandInRegistry(model_file, error=unavailable), "models:/tiny/7", _settings())
    import onnx

    broken = onnx.load_from_string(tiny_features_model())
    wrong = features_contract(feature_names=("power_dbfs",), feature_mean=(0.0,), feature_std=(1.0,))
    del broken.metadata_props[:]
    onnx.helper.set_model_props(broken, {"heimdall.contract": wrong.to_json()})
    path = tmp_path / "broken.onnx"
    path.write_bytes(broken.SerializeToString())
    with pytest.raises(ModelContractError, match="the contract needs 1"):
        load_version(StandInRegistry(path), "models:/tiny/8", _settings())
