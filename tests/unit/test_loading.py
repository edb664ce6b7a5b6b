"""The one model-loading path: fetch from a source, load with the settings, warm up (two rows by default)."""

from __future__ import annotations

import numpy as np
import pytest

from heimdall_stream.config import Settings
from heimdall_stream.errors import InferenceError, ModelContractError, RegistryUnavailableError
from heimdall_stream.models import inference
from heimdall_stream.models.loading import load_version
from heimdall_stream.models.registry import FetchedModel, file_sha256
from tests.helpers import features_contract, tiny_features_model, tiny_model


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
        {
            "model": {"intra_op_threads": 2, "inter_op_threads": 1, "warm_up_batch_size": 3},
            "batching": {"max_batch_size": 5},
        }
    )


def test_loads_with_the_configured_threads_and_warm_up_batch(model_file, monkeypatch):
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
    assert warmed == [3]  # its own setting, not the serving batch size (5)


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


def test_a_model_with_a_fixed_batch_dimension_is_refused(tmp_path):
    import onnx

    fixed = onnx.load_from_string(tiny_features_model())
    fixed.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    path = tmp_path / "fixed.onnx"
    path.write_bytes(fixed.SerializeToString())
    with pytest.raises(ModelContractError, match="fixed batch dimension of 1"):
        load_version(StandInRegistry(path), "models:/tiny/7", Settings())


def test_a_graph_that_only_takes_one_capture_is_refused_at_load(tmp_path):
    import onnx
    from onnx import numpy_helper

    one_row = onnx.load_from_string(tiny_model(features_contract()))
    flat = next(i for i in one_row.graph.initializer if i.name == "flat")
    flat.CopyFrom(numpy_helper.from_array(np.array([1, -1], np.int64), "flat"))  # every row into one
    path = tmp_path / "one_row.onnx"
    path.write_bytes(one_row.SerializeToString())
    # onnxruntime's shape inference already tells (the outputs have one row); where it cannot,
    # the two-row warm-up does.
    with pytest.raises((ModelContractError, InferenceError), match="position_enu_m"):
        load_version(StandInRegistry(path), "models:/tiny/7", Settings())
