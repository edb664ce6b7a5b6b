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
own, so training and serving compute identical inputs.  Its building blocks (``NodeMaker``,
``raw_feature_nodes``, ``arrival_nodes``, ``posterior_nodes``) also build ``power_grid``.
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


GRAPH_INPUTS = ("receiver_features", "receiver_mask")


class NodeMaker:
    """Builds ONNX nodes and initializers whose names carry a prefix (graph inputs excepted)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.consts: dict[str, npt.NDArray[Any]] = {}

    def __call__(self, op: str, inputs: list[str], outputs: list[str], **attrs: Any) -> Any:
        """One node; names that are not graph inputs get the prefix."""
        from onnx import helper

        return helper.make_node(
            op,
            [i if i in GRAPH_INPUTS else self.prefix + i for i in inputs],
            [self.prefix + o for o in outputs],
            **attrs,
        )

    def initializers(self) -> list[Any]:
        """The constants registered in ``consts``, as prefixed initializers."""
        from onnx import numpy_helper

        return [numpy_helper.from_array(value, self.prefix + key) for key, value in self.consts.items()]


def grid_points(contract: ModelContract) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Grid (G, 2) in east/north metres and expected arrival times (N, G) in µs."""
    frame = contract.frame
    receivers = contract.network.receivers
    rx_e, rx_n = frame.to_enu([r.latitude for r in receivers], [r.longitude for r in receivers])
    extent = float(np.max(np.abs(np.concatenate([rx_e, rx_n])))) + GRID_MARGIN_M
    axis = np.arange(-extent, extent + GRID_SPACING_M, GRID_SPACING_M)
    east, north = np.meshgrid(axis, axis)
    grid = np.stack([east.ravel(), north.ravel()], axis=1)
    return grid, distances(contract, grid) / SPEED_OF_LIGHT_M_PER_US


def distances(contract: ModelContract, grid: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """WGS84 geodesic distance (N, G) in metres from each receiver to each east/north grid point."""
    lat, lon = contract.frame.to_latlon(grid[:, 0], grid[:, 1])
    geod = Geod(ellps="WGS84")
    return np.stack(
        [
            geod.inv(lon, lat, np.full(len(grid), r.longitude), np.full(len(grid), r.latitude))[2]
            for r in contract.network.receivers
        ]
    )


def raw_feature_nodes(n: NodeMaker, contract: ModelContract, name: str) -> list[Any]:
    """Nodes of one feature back in its own units, (B, N) named ``name``, zero in absent slots."""
    names = list(contract.feature_names)
    if name not in names:
        raise ValueError(f"the grid needs the {name} feature")
    i = names.index(name)
    n.consts |= {
        f"idx_{name}": np.array([i], np.int64),
        f"std_{name}": np.array([contract.feature_std[i]], np.float32),
        f"mean_{name}": np.array([contract.feature_mean[i]], np.float32),
        "shape_bn": np.array([-1, len(contract.network.receivers)], np.int64),
    }
    return [
        n("Gather", ["receiver_features", f"idx_{name}"], [f"{name}_3"], axis=2),
        n("Reshape", [f"{name}_3", "shape_bn"], [f"{name}_norm"]),
        n("Mul", [f"{name}_norm", f"std_{name}"], [f"{name}_scaled"]),
        n("Add", [f"{name}_scaled", f"mean_{name}"], [f"{name}_unmasked"]),
        n("Mul", [f"{name}_unmasked", "receiver_mask"], [name]),
    ]


def arrival_nodes(
    n: NodeMaker, contract: ModelContract, arrival: npt.NDArray[np.float64], sigma_us: float
) -> list[Any]:
    """Nodes of ``nll`` (B, G): the Student-t misfit of the measured TDOAs at every grid point.

    Also leaves ``v`` (B, N, 1 where the TDOA is valid), ``k`` and ``k_safe`` (their count).
    """
    n.consts |= {
        "half": np.array([0.5], np.float32),
        "one": np.array([1.0], np.float32),
        "axis1": np.array([1], np.int64),
        "axis2": np.array([2], np.int64),
        "tau": arrival.astype(np.float32),
        "tau_t": arrival.T.astype(np.float32)[None, :, :],  # (1, G, N)
        "inv_nu_s2": np.array([1.0 / (STUDENT_NU * sigma_us**2)], np.float32),
    }
    return [
        # raw TDOA (µs) and validity per slot, zero where absent
        *raw_feature_nodes(n, contract, "tdoa_us"),
        *raw_feature_nodes(n, contract, "tdoa_valid"),
        n("Greater", ["tdoa_valid", "half"], ["v_bool"]),
        n("Cast", ["v_bool"], ["v"], to=1),
        n("Mul", ["tdoa_us", "v"], ["t"]),
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
    ]


def posterior_nodes(n: NodeMaker, grid: npt.NDArray[np.float64], spacing_m: float) -> list[Any]:
    """Nodes summarising the posterior of ``logits`` (B, G) over ``grid`` (G, 2) metres.

    Leaves ``me``, ``mn`` (mean, 100 km units), ``log_sde``, ``log_sdn``, ``corr`` and
    ``neg_entropy``, each (B, 1), and the weights ``w`` (B, G).
    """
    unit = grid / UNIT_M
    second = np.stack([unit[:, 0] ** 2, unit[:, 1] ** 2, unit[:, 0] * unit[:, 1]], axis=1)
    n.consts |= {
        "tiny": np.array([1e-12], np.float32),
        "grid": unit.astype(np.float32),
        "grid_second": second.astype(np.float32),
        "quant": np.array([(spacing_m / UNIT_M) ** 2 / 12.0], np.float32),
        "rho_lo": np.array(-0.99, np.float32),
        "rho_hi": np.array(0.99, np.float32),
        "split_2_1": np.array([1, 1], np.int64),
        "split_3": np.array([1, 1, 1], np.int64),
        "axis1": np.array([1], np.int64),
    }
    return [
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
        # how spread the posterior is
        n("Add", ["w", "tiny"], ["w_safe"]),
        n("Log", ["w_safe"], ["log_w"]),
        n("Mul", ["w", "log_w"], ["w_log_w"]),
        n("ReduceSum", ["w_log_w", "axis1"], ["neg_entropy"], keepdims=1),
    ]


def grid_nodes(contract: ModelContract, prefix: str = "tg_") -> tuple[list[Any], list[Any], str]:
    """ONNX nodes and initializers computing (B, GRID_FEATURES) grid features from the model inputs.

    Inputs are the model's own: ``receiver_features`` (normalised) and ``receiver_mask``.
    """
    grid, arrival = grid_points(contract)
    n = NodeMaker(prefix)
    n.consts |= {
        "neg_half_nu1": np.array([-(STUDENT_NU + 1.0) / 2.0], np.float32),
        "slots": np.array([float(len(contract.network.receivers))], np.float32),
    }
    nodes = [
        *arrival_nodes(n, contract, arrival, TDOA_SIGMA_US),
        n("Mul", ["nll", "neg_half_nu1"], ["logits"]),
        *posterior_nodes(n, grid, GRID_SPACING_M),
        n("Div", ["k", "slots"], ["share"]),
        # How well the best grid point explains the arrivals (large: an inconsistent TDOA, so
        # trust the posterior less).
        n("ReduceMin", ["nll"], ["best_nll"], axes=[1], keepdims=1),
        n("Div", ["best_nll", "k_safe"], ["fit"]),
        n(
            "Concat",
            ["me", "mn", "log_sde", "log_sdn", "corr", "share", "fit", "neg_entropy"],
            ["features"],
            axis=1,
        ),
    ]
    return nodes, n.initializers(), prefix + "features"


def standalone_model(
    name: str, contract: ModelContract, built: tuple[list[Any], list[Any], str], width: int
) -> bytes:
    """Grid nodes as an ONNX model of their own, on the features input (used at training time).

    ``built``: what ``grid_nodes`` (or the power grid's) returns: nodes, initializers and the
    output's name.  Inputs ``receiver_features`` (b, slots, features) and ``receiver_mask``
    (b, slots), output (b, ``width``), as the nodes run inside the localizer graph.
    """
    import onnx
    from onnx import TensorProto, helper

    nodes, initializers, output = built
    slots, features = len(contract.network.receivers), len(contract.feature_names)
    graph = helper.make_graph(
        nodes,
        name,
        [
            helper.make_tensor_value_info("receiver_features", TensorProto.FLOAT, ["b", slots, features]),
            helper.make_tensor_value_info("receiver_mask", TensorProto.FLOAT, ["b", slots]),
        ],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, ["b", width])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def run_standalone(
    model: bytes,
    normalised: npt.NDArray[np.float32],
    mask: npt.NDArray[np.float32],
    what: str,
    batch: int = 64,
) -> npt.NDArray[np.float32]:
    """Run a ``standalone_model`` over normalised features by onnxruntime, as when serving."""
    import onnxruntime as ort

    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    parts = [
        session.run(
            None, {"receiver_features": normalised[i : i + batch], "receiver_mask": mask[i : i + batch]}
        )[0]
        for i in range(0, len(normalised), batch)
    ]
    out = np.concatenate(parts).astype(np.float32)
    if not np.isfinite(out).all():
        raise ValueError(f"{what} produced non-finite features")
    return out


def run_grid(
    contract: ModelContract,
    normalised: npt.NDArray[np.float32],
    mask: npt.NDArray[np.float32],
    batch: int = 64,
) -> npt.NDArray[np.float32]:
    """Grid features (B, GRID_FEATURES) of normalised features, by onnxruntime as when serving."""
    model = standalone_model("tdoa_grid", contract, grid_nodes(contract), GRID_FEATURES)
    return run_standalone(model, normalised, mask, "TDOA grid", batch)
