"""Model contract: a model that does not fit is refused with a clear error."""

from __future__ import annotations

import dataclasses
import json

import onnx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from heimdall_stream.errors import ModelContractError
from heimdall_stream.geo import chi2_2_scale
from heimdall_stream.models.contract import CONTRACT_KEY, TensorSpec, parse_contract, validate_contract
from heimdall_stream.models.features import FEATURE_NAMES
from heimdall_stream.models.inference import load_model
from heimdall_stream.models.registry import file_sha256
from tests.helpers import NETWORK, features_contract, tiny_features_model

SLOTS = len(NETWORK.receivers)
WIDTH = len(FEATURE_NAMES)
GOOD_INPUTS = [
    TensorSpec("receiver_features", "tensor(float)", ("b", SLOTS, WIDTH)),
    TensorSpec("receiver_mask", "tensor(float)", ("b", SLOTS)),
]
GOOD_OUTPUTS = [
    TensorSpec("position_enu_m", "tensor(float)", ("b", 2)),
    TensorSpec("covariance_enu", "tensor(float)", ("b", 3)),
]


def _meta(**changes):
    body = json.loads(features_contract().to_json())
    body.update(changes)
    return {CONTRACT_KEY: json.dumps(body)}


def test_a_good_contract_round_trips():
    contract = validate_contract(_meta(), GOOD_INPUTS, GOOD_OUTPUTS)
    assert contract.input_kind == "features" and contract.slots["torino"] == 2
    assert parse_contract(contract.to_json()).feature_names == contract.feature_names


@pytest.mark.parametrize(
    ("meta", "inputs", "outputs", "message"),
    [
        ({}, GOOD_INPUTS, GOOD_OUTPUTS, "no 'heimdall.contract' metadata"),
        ({CONTRACT_KEY: "{not json"}, GOOD_INPUTS, GOOD_OUTPUTS, "not valid JSON"),
        (
            _meta(contract="heimdall.localization/v0"),
            GOOD_INPUTS,
            GOOD_OUTPUTS,
            "unsupported contract version",
        ),
        (_meta(input_kind="spectrogram"), GOOD_INPUTS, GOOD_OUTPUTS, "input_kind"),
        (_meta(receivers=[]), GOOD_INPUTS, GOOD_OUTPUTS, "no receivers"),
        (_meta(reference={"latitude": 95, "longitude": 0}), GOOD_INPUTS, GOOD_OUTPUTS, "reference point"),
        (
            _meta(features={"names": ["power_dbfs", "x"], "mean": [0, 0], "std": [1, 1]}),
            GOOD_INPUTS,
            GOOD_OUTPUTS,
            "does not compute",
        ),
        (
            _meta(features={"names": ["power_dbfs"], "mean": [0], "std": [0]}),
            GOOD_INPUTS,
            GOOD_OUTPUTS,
            "std > 0",
        ),
        (_meta(), GOOD_INPUTS[:1], GOOD_OUTPUTS, "must have inputs"),
        (
            _meta(),
            [GOOD_INPUTS[0], TensorSpec("receiver_mask", "tensor(float)", ("b", 3))],
            GOOD_OUTPUTS,
            "dimension 1 is 3",
        ),
        (
            _meta(),
            [TensorSpec("receiver_features", "tensor(double)", ("b", SLOTS, WIDTH)), GOOD_INPUTS[1]],
            GOOD_OUTPUTS,
            "must be float32",
        ),
        (_meta(), GOOD_INPUTS, GOOD_OUTPUTS[:1], "no output 'covariance_enu'"),
        (
            _meta(),
            GOOD_INPUTS,
            [GOOD_OUTPUTS[0], TensorSpec("covariance_enu", "tensor(float)", ("b", 4))],
            "dimension 1 is 4",
        ),
    ],
)
def test_bad_contracts_are_refused_with_a_clear_error(meta, inputs, outputs, message):
    with pytest.raises(ModelContractError, match=message):
        validate_contract(meta, inputs, outputs)


def test_load_model_refuses_a_model_whose_graph_breaks_its_contract(tmp_path):
    model = onnx.load_from_string(tiny_features_model())
    wrong = dataclasses.replace(
        features_contract(), feature_names=("power_dbfs",), feature_mean=(0.0,), feature_std=(1.0,)
    )
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, {CONTRACT_KEY: wrong.to_json()})
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(ModelContractError, match=f"dimension 2 is {WIDTH}, the contract needs 1"):
        load_model(path, name="m", version="1", uri="u", sha256=file_sha256(path))


COVERAGE = ((0.5, 1.1), (0.6827, 1.4), (0.95, 2.9))


def test_declared_coverage_round_trips_and_sets_the_ellipse_radius():
    contract = parse_contract(features_contract(coverage=COVERAGE).to_json())
    assert contract.coverage == COVERAGE
    assert contract.radius(0.6827) == pytest.approx(1.4) and contract.radius(0.95) == pytest.approx(2.9)
    assert 1.4 < contract.radius(0.8) < 2.9
    # Beyond the declared levels the radius scales like the Gaussian's from the nearest level.
    assert contract.radius(0.99) == pytest.approx(2.9 * chi2_2_scale(0.99) / chi2_2_scale(0.95))
    assert contract.radius(0.2) == pytest.approx(1.1 * chi2_2_scale(0.2) / chi2_2_scale(0.5))
    assert features_contract().radius(0.95) == pytest.approx(chi2_2_scale(0.95))


@given(st.floats(0.001, 0.999))
def test_the_declared_radius_is_monotone_and_positive(confidence):
    contract = features_contract(coverage=COVERAGE)
    assert 0 < contract.radius(confidence) <= contract.radius(min(confidence + 0.0005, 0.9995))


@pytest.mark.parametrize(
    ("coverage", "message"),
    [
        ({"levels": [0.5, 0.9], "radii": [1.0]}, "2 levels but 1 radii"),
        ({"levels": [0.9, 0.5], "radii": [1.0, 2.0]}, "increase strictly"),
        ({"levels": [0.5, 0.9], "radii": [2.0, 1.0]}, "increase strictly"),
        ({"levels": [0.0, 0.9], "radii": [1.0, 2.0]}, "lie in"),
        ({"levels": [0.5], "radii": ["x"]}, "numeric"),
    ],
)
def test_bad_declared_coverage_is_refused(coverage, message):
    body = json.loads(features_contract().to_json())
    body["coverage"] = coverage
    with pytest.raises(ModelContractError, match=message):
        parse_contract(json.dumps(body))
