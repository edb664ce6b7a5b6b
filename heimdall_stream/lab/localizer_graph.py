"""The reference features model as one ONNX graph: grid posteriors, regressors, calibrated covariance.

``export_features_model`` joins the fitted scikit-learn regressors (converted by skl2onnx, every
name prefixed) with the grid nodes of ``tdoa_grid`` and ``power_grid`` and the calibration of
log σ per regime, and stores the contract in ``metadata_props``.  The position is the TDOA
grid's posterior mean where ``MIN_TDOA_RECEIVERS`` take part, the power grid's elsewhere.  The
scales below are shared with training: positions in units of ``POSITION_SCALE_M``, errors in
``ERROR_SCALE_M``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

from heimdall_stream.lab.power_grid import PriorRegion, power_grid_nodes
from heimdall_stream.lab.tdoa_grid import SHARE_COLUMN, grid_nodes
from heimdall_stream.models.contract import CONTRACT_KEY, OUTPUTS, ModelContract

POSITION_SCALE_M = 100_000.0
ERROR_SCALE_M = 1_000.0
# E[log χ²₁] = ψ(1/2) + ln 2: the mean of log(r²) sits this far below log(σ²).
LOG_CHI2_1_MEAN = -1.2703628454614782
RHO_LIMIT = 0.9
Calibration = tuple[tuple[float, float], tuple[float, float]]
# With four or more synchronised receivers the TDOA grid pins the transmitter down.
MIN_TDOA_RECEIVERS = 4
OPSET = 17


def export_features_model(
    log_var: list[Any],
    correlation: Any,
    *,
    contract: ModelContract,
    width: int,
    calibration: Calibration,
    region: PriorRegion,
) -> Any:
    """One ONNX ModelProto: flatten → grids → position; three regressors → covariance; contract inside."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    slots, n_features = len(contract.network.receivers), len(contract.feature_names)
    parts = {
        name: _sklearn_graph(model, width, name)
        for name, model in (("lve", log_var[0]), ("lvn", log_var[1]), ("rho", correlation))
    }
    consts: dict[str, npt.NDArray[Any]] = {
        "flat_shape": np.array([-1, slots * n_features], np.int64),
        "pos_scale": np.array([POSITION_SCALE_M], np.float32),
        # log σ = shift + slope · (½ (log_var − E[log χ²₁]) + log ERROR_SCALE_M)
        "lv_shift": np.array([-LOG_CHI2_1_MEAN + 2.0 * math.log(ERROR_SCALE_M)], np.float32),
        "half_slope_grid": np.array([0.5 * calibration[0][1]], np.float32),
        "cal_shift_grid": np.array([calibration[0][0]], np.float32),
        "half_slope_power": np.array([0.5 * calibration[1][1]], np.float32),
        "cal_shift_power": np.array([calibration[1][0]], np.float32),
        "rho_min": np.array(-RHO_LIMIT, np.float32),
        "rho_max": np.array(RHO_LIMIT, np.float32),
        "rho_shape": np.array([-1, 1], np.int64),
    }
    grid_nodes_list, grid_initializers, grid_output = grid_nodes(contract)
    power_nodes, power_initializers, power_output = power_grid_nodes(contract, region)
    # The consumer normalises with the contract's statistics; the graph only flattens.
    nodes = [
        helper.make_node("Unsqueeze", ["receiver_mask", "axis_last"], ["mask3"]),
        helper.make_node("Mul", ["receiver_features", "mask3"], ["masked"]),
        helper.make_node("Reshape", ["masked", "flat_shape"], ["flat"]),
        helper.make_node("ReduceSum", ["masked", "axis_slots"], ["sums"], keepdims=0),
        *power_nodes,
        *grid_nodes_list,
        helper.make_node(
            "Concat", ["flat", "receiver_mask", "sums", power_output, grid_output], ["x"], axis=1
        ),
    ]
    initializers = [numpy_helper.from_array(v, k) for k, v in consts.items()]
    initializers.append(numpy_helper.from_array(np.array([-1], np.int64), "axis_last"))
    initializers.append(numpy_helper.from_array(np.array([1], np.int64), "axis_slots"))
    initializers.extend(grid_initializers)
    initializers.extend(power_initializers)
    for name, value in (
        ("zero_i", 0),
        ("two_i", 2),
        ("one_i", 1),
        ("share_i", SHARE_COLUMN),
        ("share_end_i", SHARE_COLUMN + 1),
    ):
        initializers.append(numpy_helper.from_array(np.array([value], np.int64), name))
    min_share = (MIN_TDOA_RECEIVERS - 0.5) / slots
    initializers.append(numpy_helper.from_array(np.array([min_share], np.float32), "min_share"))
    opsets = {"": OPSET}
    for part in parts.values():
        nodes.extend(part.graph.node)
        initializers.extend(part.graph.initializer)
        for opset in part.opset_import:
            opsets[opset.domain] = max(opsets.get(opset.domain, 0), opset.version)
    nodes += [
        helper.make_node("Slice", [grid_output, "zero_i", "two_i", "one_i"], ["grid_mean_unit"]),
        helper.make_node("Slice", [grid_output, "share_i", "share_end_i", "one_i"], ["grid_share"]),
        helper.make_node("Greater", ["grid_share", "min_share"], ["use_grid"]),
        helper.make_node("Slice", [power_output, "zero_i", "two_i", "one_i"], ["power_mean_unit"]),
        helper.make_node("Where", ["use_grid", "grid_mean_unit", "power_mean_unit"], ["pos_unit"]),
        helper.make_node("Mul", ["pos_unit", "pos_scale"], ["position_enu_m"]),
        helper.make_node("Reshape", [_output(parts["lve"]), "rho_shape"], ["lve_col"]),
        helper.make_node("Reshape", [_output(parts["lvn"]), "rho_shape"], ["lvn_col"]),
        helper.make_node("Concat", ["lve_col", "lvn_col"], ["lv"], axis=1),
        helper.make_node("Add", ["lv", "lv_shift"], ["log_var"]),
        helper.make_node("Mul", ["log_var", "half_slope_grid"], ["log_sigma_grid_raw"]),
        helper.make_node("Add", ["log_sigma_grid_raw", "cal_shift_grid"], ["log_sigma_grid"]),
        helper.make_node("Mul", ["log_var", "half_slope_power"], ["log_sigma_power_raw"]),
        helper.make_node("Add", ["log_sigma_power_raw", "cal_shift_power"], ["log_sigma_power"]),
        helper.make_node("Where", ["use_grid", "log_sigma_grid", "log_sigma_power"], ["log_sigma"]),
        helper.make_node("Exp", ["log_sigma"], ["sigmas"]),
        helper.make_node("Reshape", [_output(parts["rho"]), "rho_shape"], ["rho_raw"]),
        helper.make_node("Clip", ["rho_raw", "rho_min", "rho_max"], ["rho"]),
        helper.make_node("Concat", ["sigmas", "rho"], ["covariance_enu"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "heimdall_features_localizer",
        [
            helper.make_tensor_value_info(
                "receiver_features", TensorProto.FLOAT, ["batch", slots, n_features]
            ),
            helper.make_tensor_value_info("receiver_mask", TensorProto.FLOAT, ["batch", slots]),
        ],
        output_value_infos(),
        initializers,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()],
        producer_name="heimdall-stream",
    )
    helper.set_model_props(model, {CONTRACT_KEY: contract.to_json()})
    onnx.checker.check_model(model)
    return model


def _output(part: Any) -> str:
    return str(part.graph.output[0].name)


def _sklearn_graph(model: Any, width: int, prefix: str) -> Any:
    """The ONNX model of one fitted regressor, every name prefixed and its input renamed 'x'."""
    from onnx import compose
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    onx = convert_sklearn(model, initial_types=[("x", FloatTensorType([None, width]))], target_opset=OPSET)
    onx = compose.add_prefix(onx, prefix=f"{prefix}_")
    old_input = onx.graph.input[0].name
    for node in onx.graph.node:
        for i, name in enumerate(node.input):
            if name == old_input:
                node.input[i] = "x"
    return onx


def output_value_infos() -> list[Any]:
    """The graph outputs every localization model declares (DESIGN §4), from the contract's list."""
    from onnx import TensorProto, helper

    return [
        helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", width])
        for name, width in OUTPUTS.items()
    ]
