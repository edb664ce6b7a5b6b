"""Model input kinds: each kind's contract part, graph shapes, prepared inputs and cache keys."""

from __future__ import annotations

import json

import blake3
import numpy as np
import pytest

from heimdall_stream.errors import ModelContractError
from heimdall_stream.lab.simulator import IqSimulator, LinkModel
from heimdall_stream.models.contract import CONTRACT_KEY, TensorSpec, parse_contract, validate_contract
from heimdall_stream.models.features import FEATURE_NAMES
from heimdall_stream.models.inference import load_model
from heimdall_stream.models.inputs import INPUT_KINDS
from heimdall_stream.models.registry import file_sha256
from tests.helpers import NETWORK, features_contract, iq_contract, tiny_model

CONTRACTS = {"features": features_contract(), "iq": iq_contract()}
OUTPUTS = [
    TensorSpec("position_enu_m", "tensor(float)", ("b", 2)),
    TensorSpec("covariance_enu", "tensor(float)", ("b", 3)),
]


def _graph_inputs(contract):
    """The graph inputs a model of this contract declares (batch axis dynamic)."""
    shapes = contract.input_adapter.input_shapes(contract)
    return [TensorSpec(name, "tensor(float)", ("b", *shape[1:])) for name, shape in shapes.items()]


def _captures(n, seed=0):
    sim = IqSimulator(NETWORK, LinkModel(offline_probability=0.3), seed=seed)
    return [sim.generate(i).capture for i in range(n)]


@pytest.fixture(scope="module", params=sorted(INPUT_KINDS))
def loaded(request, tmp_path_factory):
    """A tiny model of each registered kind, loaded (and so warmed up)."""
    path = tmp_path_factory.mktemp(request.param) / "model.onnx"
    path.write_bytes(tiny_model(CONTRACTS[request.param]))
    return load_model(path, name="tiny", version="1", uri="u", sha256=file_sha256(path), warm_up_batch=3)


def test_every_registered_kind_has_a_test_contract():
    assert set(CONTRACTS) == set(INPUT_KINDS)
    assert all(kind.name == name for name, kind in INPUT_KINDS.items())


@pytest.mark.parametrize("kind", sorted(INPUT_KINDS))
def test_each_kind_round_trips_its_contract_and_accepts_its_own_graph(kind):
    contract = CONTRACTS[kind]
    assert parse_contract(contract.to_json()) == contract
    validated = validate_contract({CONTRACT_KEY: contract.to_json()}, _graph_inputs(contract), OUTPUTS)
    assert validated.input_kind == kind and validated.input_adapter is INPUT_KINDS[kind]


def test_the_iq_kind_has_no_features_part_and_wants_the_contract_sample_count():
    contract = iq_contract(sample_count=4_000)
    assert "features" not in json.loads(contract.to_json())
    assert contract.input_adapter.input_shapes(contract) == {
        "iq": (None, len(NETWORK.receivers), 2, 4_000),
        "receiver_mask": (None, len(NETWORK.receivers)),
    }
    short = [
        TensorSpec("iq", "tensor(float)", ("b", len(NETWORK.receivers), 2, 1_000)),
        _graph_inputs(contract)[1],
    ]
    with pytest.raises(ModelContractError, match="'iq' dimension 3 is 1000, the contract needs 4000"):
        validate_contract({CONTRACT_KEY: contract.to_json()}, short, OUTPUTS)
    with pytest.raises(ModelContractError, match=r"a iq model must have inputs \['iq', 'receiver_mask'\]"):
        validate_contract({CONTRACT_KEY: contract.to_json()}, _graph_inputs(features_contract()), OUTPUTS)


def test_a_features_contract_without_its_features_part_is_refused():
    body = json.loads(features_contract().to_json())
    del body["features"]
    with pytest.raises(ModelContractError, match="needs a 'features' object"):
        parse_contract(json.dumps(body))


def test_an_unknown_kind_is_refused_naming_the_known_ones():
    body = json.loads(features_contract().to_json()) | {"input_kind": "spectrogram"}
    with pytest.raises(ModelContractError, match="input_kind must be 'features' or 'iq', got 'spectrogram'"):
        parse_contract(json.dumps(body))


def test_prepared_inputs_have_the_declared_shapes_and_absent_slots_are_zero(loaded):
    captures = _captures(4)
    batch = loaded.prepare(captures)
    shapes = loaded.contract.input_adapter.input_shapes(loaded.contract)
    assert list(batch.inputs) == list(shapes)
    for name, shape in shapes.items():
        assert batch.inputs[name].dtype == np.float32 and batch.inputs[name].shape == (4, *shape[1:])
    mask = batch.inputs["receiver_mask"]
    assert (mask == 0).any()
    main = batch.inputs[next(iter(shapes))]
    assert (main[mask == 0] == 0).all()
    assert batch.receivers_used == tuple(tuple(r.receiver_id for r in c.receivers) for c in captures)
    prediction = loaded.infer(batch)
    assert prediction.position_enu_m.shape == (4, 2)


def test_cache_keys_hash_exactly_the_model_inputs_and_the_model(loaded):
    """The key is BLAKE3 over the model's sha256 and each input row's bytes, in input order."""
    batch = loaded.prepare(_captures(3))
    for row, key in enumerate(batch.cache_keys):
        digest = blake3.blake3(loaded.sha256.encode())
        for array in batch.inputs.values():
            digest.update(array[row].tobytes())
        assert key == digest.hexdigest(20)
    assert len(set(batch.cache_keys)) == 3
    assert batch.subset([2, 0]).cache_keys == (batch.cache_keys[2], batch.cache_keys[0])


def test_warm_up_inputs_have_the_batch_size_and_every_receiver_present(loaded):
    inputs = loaded.input_adapter.warm_up_inputs(5)
    assert all(array.shape[0] == 5 for array in inputs.values())
    assert (inputs["receiver_mask"] == 1).all()


def _load(path, contract):
    path.write_bytes(tiny_model(contract))
    return load_model(path, name="m", version="1", uri="u", sha256=file_sha256(path), warm_up_batch=1)


def test_a_features_model_gets_its_own_columns_in_its_own_order(tmp_path):
    names = ("snr_db", "power_dbfs")
    mean, std = (10.0, -30.0), (5.0, 2.0)
    contract = features_contract(feature_names=names, feature_mean=mean, feature_std=std)
    captures = _captures(2)
    chosen = _load(tmp_path / "two.onnx", contract).prepare(captures).inputs
    # Every feature with mean 0 and std 1: the raw features.
    raw = _load(tmp_path / "all.onnx", features_contract()).prepare(captures).inputs["receiver_features"]
    mask = chosen["receiver_mask"]
    for column, name in enumerate(names):
        expected = (raw[..., FEATURE_NAMES.index(name)] - mean[column]) / std[column] * mask
        np.testing.assert_allclose(chosen["receiver_features"][..., column], expected, rtol=1e-5, atol=1e-4)
