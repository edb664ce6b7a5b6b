"""The registry is a real MLflow server: log, register, alias, download, run."""

from __future__ import annotations

import contextlib

import mlflow
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from onnx import TensorProto, helper

pytestmark = pytest.mark.integration

MODEL_NAME = "localization_model"


def _tiny_onnx() -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 2])
    two = helper.make_tensor("two", TensorProto.FLOAT, [1], [2.0])
    graph = helper.make_graph([helper.make_node("Mul", ["x", "two"], ["y"])], "double", [x], [y], [two])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_log_register_alias_download_and_run(mlflow_uri, tmp_path):
    mlflow.set_tracking_uri(mlflow_uri)
    client = MlflowClient(mlflow_uri)
    previous = None
    with contextlib.suppress(MlflowException):
        previous = client.get_model_version_by_alias(MODEL_NAME, "champion").version

    mlflow.set_experiment("heimdall-smoke")
    with mlflow.start_run():
        info = mlflow.onnx.log_model(_tiny_onnx(), name="model", registered_model_name=MODEL_NAME)
    version = info.registered_model_version
    try:
        client.set_registered_model_alias(MODEL_NAME, "champion", version)
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{MODEL_NAME}@champion", dst_path=str(tmp_path)
        )
        session = ort.InferenceSession(f"{local}/model.onnx", providers=["CPUExecutionProvider"])
        (out,) = session.run(None, {"x": np.array([[1.0, -3.0]], dtype=np.float32)})
        np.testing.assert_allclose(out, [[2.0, -6.0]])
    finally:
        # Leave the registry as it was: the demo and other tests rely on the real champion.
        if previous is not None:
            client.set_registered_model_alias(MODEL_NAME, "champion", previous)
        else:
            client.delete_registered_model_alias(MODEL_NAME, "champion")
        client.delete_model_version(MODEL_NAME, version)
