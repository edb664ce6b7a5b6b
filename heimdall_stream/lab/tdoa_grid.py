"""A TDOA grid posterior, written as ONNX nodes, that the reference model uses as extra inputs.

Regressors learn the hyperbolic geometry of time differences of arrival poorly from a few
thousand examples; a deterministic grid search does it exactly.  For every capture the graph
scores each point of a 2 km grid over the network by a Student-t likelihood of the mismatch
between measured and expected arrival times (both referenced to the mean over the receivers
with a valid TDOA), turns the scores into a posterior with a softmax, and summarises it as eight
numbers: posterior mean east/north, log standard deviations, correlation, the share of receivers
that took part, how well the best point fits them, and the posterior's negative entropy.
Expected arrival times use WGS84 geodesic distances (pyproj).

The same nodes run inside the exported model and, at training time, as a small model of their
own, so training and serving compute identical inputs.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
from pyproj import Geod

from heimdall_stream.models.contract import ModelContract

SPEED_OF_LIGHT_M_PER_US = 299.792458
GRID_SPACING_M = 2_000.0
GRID_MARGIN_M = 40_000.0
TDOA_SIGMA_US = 2.0  # scale of the arrival-time error: disciplined clock jitter + correlation
STUDENT_NU = 4.0  # heavy tails: an occasional wrong correlation peak is expected
UNIT_M = 100_000.0  # posterior means and deviations are expressed in 100 km
GRID_FEATURES = 8
SHARE_COLUMN = 5  # the share of receivers with a valid TDOA


def grid_points(contract: ModelContract) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Grid (G, 2) in east/north metres and expected arrival times (N, G) in µs."""
    frame = contract.frame
    receivers = contract.network.receivers
    rx_e, rx_n = frame.to_enu([r.latitude for r in receivers], [r.longitude for r in receivers])
    extent = float(np.max(np.abs(np.concatenate([rx_e, rx_n])))) + GRID_MARGIN_M
    axis = np.arange(-extent, extent + GRID_SPACING_M, GRID_SPACING_M)
    east, north = np.meshgrid(axis, axis)
    grid = np.stack([east.ravel(), north.ravel()], axis=1)
    lat, lon = frame.to_latlon(grid[:, 0], grid[:, 1])
    geod = Geod(ellps="WGS84")
    arrival = np.stack(
        [
            geod.inv(lon, lat, np.full(len(grid), r.longitude), np.full(len(grid), r.latitude))[2]
            / SPEED_OF_LIGHT_M_PER_US
            for r in receivers
        ]
    )
    return grid, arrival


def grid_nodes(contract: ModelContract, prefix: str = "tg_") -> tuple[list[Any], list[Any], str]:
    """ONNX nodes and initializers computing (B, GRID_FEATURES) grid features from the model inputs.

    Inputs are the model's own: ``receiver_features`` (normalised) and ``receiver_mask``.
    """
    from onnx import helper, numpy_helper

    grid, arrival = grid_points(contract)
    names = list(contract.feature_names)
    if "tdoa_us" not in names or "tdoa_valid" not in names:
        raise ValueError("the TDOA grid needs the tdoa_us and tdoa_valid features")
    i_t, i_v = names.index("tdoa_us"), names.index("tdoa_valid")
    mean, std = contract.feature_mean, contract.feature_std
    unit = grid / UNIT_M
    second = np.stack([unit[:, 0] ** 2, unit[:, 1] ** 2, unit[:, 0] * unit[:, 1]], axis=1)
    quantisation = (GRID_SPACING_M / UNIT_M) ** 2 / 12.0
    slots = len(contract.network.receivers)
    consts: dict[str, npt.NDArray[Any]] = {
        "idx_t": np.array([i_t], np.int64),
        "idx_v": np.array([i_v], np.int64),
        "shape_bn": np.array([-1, slots], np.int64),
        "std_t": np.array([std[i_t]], np.float32),
        "mean_t": np.array([mean[i_t]], np.float32),
        "std_v": np.array([std[i_v]], np.float32),
        "mean_v": np.array([mean[i_v]], np.float32),
        "half": np.array([0.5], np.float32),
        "one": np.array([1.0], np.float32),
        "tiny": np.array([1e-12], np.float32),
        "axis1": np.array([1], np.int64),
        "tau": arrival.astype(np.float32),
        "tau_t": arrival.T.astype(np.float32)[None, :, :],  # (1, G, N)
        "inv_nu_s2": np.array([1.0 / (STUDENT_NU * TDOA_SIGMA_US**2)], np.float32),
        "neg_half_nu1": np.array([-(STUDENT_NU + 1.0) / 2.0], np.float32),
        "axis2": np.array([2], np.int64),
        "grid": unit.astype(np.float32),
        "grid_second": second.astype(np.float32),
        "quant": np.array([quantisation], np.float32),
        "slots": np.array([float(slots)], np.float32),
        "rho_lo": np.array(-0.99, np.float32),
        "rho_hi": np.array(0.99, np.float32),
        "split_2_1": np.array([1, 1], np.int64),
        "split_3": np.array([1, 1, 1], np.int64),
    }
    p = prefix
    node = helper.make_node

    def n(op: str, inputs: list[str], outputs: list[str], **attrs: Any) -> Any:
        return node(
            op,
            [i if i in ("receiver_features", "receiver_mask") else p + i for i in inputs],
            [p + o for o in outputs],
            **attrs,
        )

    nodes = [
        # raw TDOA (µs) and validity per slot, zero where absent
        n("Gather", ["receiver_features", "idx_t"], ["t3"], axis=2),
        n("Reshape", ["t3", "shape_bn"], ["t_norm"]),
        n("Mul", ["t_norm", "std_t"], ["t_scaled"]),
        n("Add", ["t_scaled", "mean_t"], ["t_raw"]),
        n("Gather", ["receiver_features", "idx_v"], ["v3"], axis=2),
        n("Reshape", ["v3", "shape_bn"], ["v_norm"]),
        n("Mul", ["v_norm", "std_v"], ["v_scaled"]),
        n("Add", ["v_scaled", "mean_v"], ["v_raw"]),
        n("Mul", ["v_raw", "receiver_mask"], ["v_masked"]),
        n("Greater", ["v_masked", "half"], ["v_bool"]),
        n("Cast", ["v_bool"], ["v"], to=1),
        n("Mul", ["t_raw", "v"], ["t"]),
        # Residual of receiver n at grid point g, both sides referenced to the mean arrival:
        # r = v (t − τ + τ̄),  τ̄ = (v·τ) / k.  A Student-t likelihood (ν = 4) keeps a single
        # bad correlation peak from pinning the posterior to the wrong place.
        n("MatMul", ["v", "tau"], ["s"]),
        n("ReduceSum", ["v", "axis1"], ["k"], keepdims=1),
        n("Max", ["k", "one"], ["k_safe"]),
        n("Div", ["s", "k_safe"], ["tau_bar"]),
        n("Unsqueeze", ["t", "axis1"], ["t3d"]),
        n("Unsqueeze", ["v", "axis1"], ["v3d"]),
        n("Unsqueeze", ["tau_bar", "axis2"], ["tau_bar3d"]),
        n("Sub", ["t3d", "tau_t"], ["r0"]),
        n("Add", ["r0", "tau_bar3d"], ["r1"]),
        n("Mul", ["r1", "v3d"], ["r"]),
        n("Mul", ["r", "r"], ["r_sq"]),
        n("Mul", ["r_sq", "inv_nu_s2"], ["z"]),
        n("Add", ["z", "one"], ["z1"]),
        n("Log", ["z1"], ["log_z1"]),
        n("ReduceSum", ["log_z1", "axis2"], ["nll"], keepdims=0),
        n("Mul", ["nll", "neg_half_nu1"], ["logits"]),
        n("Softmax", ["logits"], ["w"], axis=1),
        # posterior moments (100 km units)
        n("MatMul", ["w", "grid"], ["m"]),
        n("MatMul", ["w", "grid_second"], ["m2"]),
        n("Split", ["m", "split_2_1"], ["me", "mn"], axis=1),
        n("Split", ["m2", "split_3"], ["ee", "nn", "en"], axis=1),
        n("Mul", ["me", "me"], ["me2"]),
        n("Mul", ["mn", "mn"], ["mn2"]),
        n("Mul", ["me", "mn"], ["memn"]),
        n("Sub", ["ee", "me2"], ["ve0"]),
        n("Sub", ["nn", "mn2"], ["vn0"]),
        n("Sub", ["en", "memn"], ["cen"]),
        n("Relu", ["ve0"], ["ve1"]),
        n("Relu", ["vn0"], ["vn1"]),
        n("Add", ["ve1", "quant"], ["ve"]),
        n("Add", ["vn1", "quant"], ["vn"]),
        n("Sqrt", ["ve"], ["sde"]),
        n("Sqrt", ["vn"], ["sdn"]),
        n("Log", ["sde"], ["log_sde"]),
        n("Log", ["sdn"], ["log_sdn"]),
        n("Mul", ["sde", "sdn"], ["sd_prod"]),
        n("Div", ["cen", "sd_prod"], ["corr_raw"]),
        n("Clip", ["corr_raw", "rho_lo", "rho_hi"], ["corr"]),
        n("Div", ["k", "slots"], ["share"]),
        # How well the best grid point explains the arrivals (large: an inconsistent TDOA, so
        # trust the posterior less), and how spread the posterior is.
        n("ReduceMin", ["nll"], ["best_nll"], axes=[1], keepdims=1),
        n("Div", ["best_nll", "k_safe"], ["fit"]),
        n("Add", ["w", "tiny"], ["w_safe"]),
        n("Log", ["w_safe"], ["log_w"]),
        n("Mul", ["w", "log_w"], ["w_log_w"]),
        n("ReduceSum", ["w_log_w", "axis1"], ["neg_entropy"], keepdims=1),
        n(
            "Concat",
            ["me", "mn", "log_sde", "log_sdn", "corr", "share", "fit", "neg_entropy"],
            ["features"],
            axis=1,
        ),
    ]
    initializers = [numpy_helper.from_array(value, p + key) for key, value in consts.items()]
    return nodes, initializers, p + "features"


def grid_model(contract: ModelContract) -> bytes:
    """The grid features as a standalone ONNX model (used at training time)."""
    import onnx
    from onnx import TensorProto, helper

    nodes, initializers, output = grid_nodes(contract)
    slots, width = len(contract.network.receivers), len(contract.feature_names)
    graph = helper.make_graph(
        nodes,
        "tdoa_grid",
        [
            helper.make_tensor_value_info("receiver_features", TensorProto.FLOAT, ["b", slots, width]),
            helper.make_tensor_value_info("receiver_mask", TensorProto.FLOAT, ["b", slots]),
        ],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, ["b", GRID_FEATURES])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def run_grid(
    contract: ModelContract,
    normalised: npt.NDArray[np.float32],
    mask: npt.NDArray[np.float32],
    batch: int = 64,
) -> npt.NDArray[np.float32]:
    """Grid features (B, GRID_FEATURES) of normalised features, by onnxruntime as when serving."""
    import onnxruntime as ort

    session = ort.InferenceSession(grid_model(contract), providers=["CPUExecutionProvider"])
    parts = [
        session.run(
            None, {"receiver_features": normalised[i : i + batch], "receiver_mask": mask[i : i + batch]}
        )[0]
        for i in range(0, len(normalised), batch)
    ]
    out = np.concatenate(parts).astype(np.float32)
    if not np.isfinite(out).all():
        raise ValueError("TDOA grid produced non-finite features")
    return out
