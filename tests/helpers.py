"""Small hand-built models and capture factories shared by tests (no services needed)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from heimdall_stream.models.contract import CONTRACT_KEY, ModelContract
from heimdall_stream.models.features import FEATURE_NAMES
from heimdall_stream.network import Network, load_network

NETWORK = load_network()


def features_contract(network: Network = NETWORK, **overrides) -> ModelContract:
    lat, lon = network.centroid()
    values = {
        "input_kind": "features",
        "network": network,
        "reference_latitude": lat,
        "reference_longitude": lon,
        "sample_rate_hz": 50_000.0,
        "sample_count": 10_000,
        "feature_names": FEATURE_NAMES,
        "feature_mean": (0.0,) * len(FEATURE_NAMES),
        "feature_std": (1.0,) * len(FEATURE_NAMES),
    }
    values.update(overrides)
    return ModelContract(**values)


def iq_contract(network: Network = NETWORK, **overrides) -> ModelContract:
    """A contract of the ``iq`` kind (no features part), for the simulator's captures."""
    values = {"input_kind": "iq", "feature_names": (), "feature_mean": (), "feature_std": ()}
    values.update(overrides)
    return features_contract(network, **values)


def tiny_model(contract: ModelContract) -> bytes:
    """A valid model of any input kind: fixed offset and covariance, every input read (times 0).

    Its graph inputs are the ones the contract's input kind declares, so it fits any kind.
    """
    inits = [
        numpy_helper.from_array(np.array([[1500.0, -2500.0]], np.float32), "offset"),
        numpy_helper.from_array(np.array([[2000.0, 1000.0, 0.3]], np.float32), "cov"),
        numpy_helper.from_array(np.array([0, -1], np.int64), "flat"),
        numpy_helper.from_array(np.array([1], np.int64), "axis1"),
        numpy_helper.from_array(np.array([0.0], np.float32), "zero"),
    ]
    shapes = contract.input_adapter.input_shapes(contract)
    nodes, sums = [], []
    for name in shapes:  # each input → (b, 1): flattened, summed, times zero
        nodes += [
            helper.make_node("Reshape", [name, "flat"], [f"{name}_flat"]),
            helper.make_node("ReduceSum", [f"{name}_flat", "axis1"], [f"{name}_sum"], keepdims=1),
            helper.make_node("Mul", [f"{name}_sum", "zero"], [f"{name}_zero"]),
        ]
        sums.append(f"{name}_zero")
    nodes += [
        helper.make_node("Sum", sums, ["bias"]),
        helper.make_node("Add", ["offset", "bias"], ["position_enu_m"]),
        helper.make_node("Add", ["cov", "bias"], ["covariance_enu"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_any",
        [
            helper.make_tensor_value_info(name, TensorProto.FLOAT, ["b", *shape[1:]])
            for name, shape in shapes.items()
        ],
        [
            helper.make_tensor_value_info("position_enu_m", TensorProto.FLOAT, ["b", 2]),
            helper.make_tensor_value_info("covariance_enu", TensorProto.FLOAT, ["b", 3]),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    helper.set_model_props(model, {CONTRACT_KEY: contract.to_json()})
    onnx.checker.check_model(model)
    return model.SerializeToString()


def tiny_features_model(
    contract: ModelContract | None = None, *, nan_below_receivers: int | None = None
) -> bytes:
    """A valid features model: fixed offset from the reference, fixed covariance.

    With ``nan_below_receivers``, captures with fewer present receivers get NaN positions: a
    "poisonous" input for bisection tests.
    """
    contract = contract or features_contract()
    slots, width = len(contract.network.receivers), len(contract.feature_names)
    inits = [
        numpy_helper.from_array(np.array([[1500.0, -2500.0]], np.float32), "offset"),
        numpy_helper.from_array(np.array([[2000.0, 1000.0, 0.3]], np.float32), "cov"),
        numpy_helper.from_array(np.array([1], np.int64), "axis1"),
        numpy_helper.from_array(np.array([float(nan_below_receivers or 0) - 0.5], np.float32), "threshold"),
        numpy_helper.from_array(np.array([0.0], np.float32), "zero"),
    ]
    nodes = [
        # receivers present per row, minus threshold: negative → sqrt gives NaN
        helper.make_node("ReduceSum", ["receiver_mask", "axis1"], ["present"], keepdims=1),
        helper.make_node("Sub", ["present", "threshold"], ["margin"]),
        helper.make_node("Sqrt", ["margin"], ["root"]),
        helper.make_node("Mul", ["root", "zero"], ["nan_or_zero"]),
        helper.make_node("ReduceSum", ["receiver_features", "axis1"], ["fsum"], keepdims=0),
        helper.make_node("ReduceSum", ["fsum", "axis1"], ["fsum2"], keepdims=1),
        helper.make_node("Mul", ["fsum2", "zero"], ["fzero"]),
        helper.make_node("Add", ["nan_or_zero", "fzero"], ["bias"]),
        helper.make_node("Add", ["offset", "bias"], ["position_enu_m"]),
        helper.make_node("Add", ["cov", "bias"], ["covariance_enu"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [
            helper.make_tensor_value_info("receiver_features", TensorProto.FLOAT, ["b", slots, width]),
            helper.make_tensor_value_info("receiver_mask", TensorProto.FLOAT, ["b", slots]),
        ],
        [
            helper.make_tensor_value_info("position_enu_m", TensorProto.FLOAT, ["b", 2]),
            helper.make_tensor_value_info("covariance_enu", TensorProto.FLOAT, ["b", 3]),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    helper.set_model_props(model, {CONTRACT_KEY: contract.to_json()})
    onnx.checker.check_model(model)
    return model.SerializeToString()


def run_cli(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``heimdall-stream ARGS`` as a child process configured by ``env``: exit code and output."""
    return subprocess.run(
        [sys.executable, "-m", "heimdall_stream.cli", *args],
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        cwd=Path(__file__).resolve().parents[1],
    )
