"""A benchmark-only ``iq`` model: a 1-D CNN over raw IQ of realistic size, untrained.

It exists to measure throughput with a model that has millions of parameters; its contract says
``benchmark_only`` and its outputs are finite but meaningless, so it must never serve results.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from heimdall_stream.lab.localizer_graph import OPSET, output_value_infos
from heimdall_stream.models.contract import CONTRACT_KEY, ModelContract
from heimdall_stream.network import Network


def build_iq_benchmark_model(
    network: Network, sample_count: int = 10_000, seed: int = 0, hidden: int = 2048
) -> bytes:
    """A 1-D CNN over raw IQ with untrained weights: for throughput benchmarks only.

    Its contract says ``benchmark_only``; its outputs are finite but meaningless.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    slots = len(network.receivers)
    channels = [2, 32, 64, 128]
    inits: list[Any] = []
    nodes = [helper.make_node("Reshape", ["iq", "iq_shape"], ["h0"])]
    inits.append(numpy_helper.from_array(np.array([-1, 2, sample_count], np.int64), "iq_shape"))
    for i in range(3):
        w = rng.normal(0, math.sqrt(2.0 / (channels[i] * 9)), (channels[i + 1], channels[i], 9))
        inits += [
            numpy_helper.from_array(w.astype(np.float32), f"conv{i}_w"),
            numpy_helper.from_array(np.zeros(channels[i + 1], np.float32), f"conv{i}_b"),
        ]
        nodes += [
            helper.make_node(
                "Conv",
                [f"h{i}", f"conv{i}_w", f"conv{i}_b"],
                [f"c{i}"],
                kernel_shape=[9],
                strides=[4],
                pads=[4, 4],
            ),
            helper.make_node("Relu", [f"c{i}"], [f"h{i + 1}"]),
        ]
    dense_in = slots * channels[-1]
    w1 = rng.normal(0, math.sqrt(2.0 / dense_in), (dense_in, hidden)).astype(np.float32)
    w2 = rng.normal(0, 0.01, (hidden, 5)).astype(np.float32)
    inits += [
        numpy_helper.from_array(w1, "fc1_w"),
        numpy_helper.from_array(np.zeros(hidden, np.float32), "fc1_b"),
        numpy_helper.from_array(w2, "fc2_w"),
        numpy_helper.from_array(np.array([0, 0, 8, 8, 0], np.float32), "fc2_b"),
        numpy_helper.from_array(np.array([-1, slots, channels[-1]], np.int64), "pooled_shape"),
        numpy_helper.from_array(np.array([-1, dense_in], np.int64), "dense_shape"),
        numpy_helper.from_array(np.array([-1], np.int64), "axis_last"),
        numpy_helper.from_array(np.array([1000.0], np.float32), "km"),
    ]
    nodes += [
        helper.make_node("GlobalAveragePool", ["h3"], ["pooled"]),
        helper.make_node("Reshape", ["pooled", "pooled_shape"], ["per_rx"]),
        helper.make_node("Unsqueeze", ["receiver_mask", "axis_last"], ["mask3"]),
        helper.make_node("Mul", ["per_rx", "mask3"], ["masked"]),
        helper.make_node("Reshape", ["masked", "dense_shape"], ["dense"]),
        helper.make_node("Gemm", ["dense", "fc1_w", "fc1_b"], ["fc1"]),
        helper.make_node("Relu", ["fc1"], ["fc1r"]),
        helper.make_node("Gemm", ["fc1r", "fc2_w", "fc2_b"], ["head"]),
        helper.make_node("Split", ["head", "split_sizes"], ["pos_km", "log_sig", "rho_raw"], axis=1),
        helper.make_node("Mul", ["pos_km", "km"], ["position_enu_m"]),
        helper.make_node("Exp", ["log_sig"], ["sigmas"]),
        helper.make_node("Tanh", ["rho_raw"], ["rho"]),
        helper.make_node("Concat", ["sigmas", "rho"], ["covariance_enu"], axis=1),
    ]
    inits.append(numpy_helper.from_array(np.array([2, 2, 1], np.int64), "split_sizes"))
    graph = helper.make_graph(
        nodes,
        "heimdall_iq_benchmark_cnn",
        [
            helper.make_tensor_value_info("iq", TensorProto.FLOAT, ["batch", slots, 2, sample_count]),
            helper.make_tensor_value_info("receiver_mask", TensorProto.FLOAT, ["batch", slots]),
        ],
        output_value_infos(),
        inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="heimdall-stream"
    )
    contract = ModelContract(
        input_kind="iq",
        network=network,
        reference_latitude=network.centroid()[0],
        reference_longitude=network.centroid()[1],
        sample_rate_hz=50_000.0,
        sample_count=sample_count,
        benchmark_only=True,
        description="BENCHMARK ONLY: 1-D CNN over raw IQ with untrained weights; outputs are meaningless",
    )
    helper.set_model_props(model, {CONTRACT_KEY: contract.to_json(), "heimdall.benchmark_only": "true"})
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())
