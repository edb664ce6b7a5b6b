"""A consumer resolves its model over MLflow's REST API: the MLflow client (~130 MB) is never imported.

Against the real MLflow server of the local stack: a fresh interpreter fetches a version that is
already in its cache and loads nothing of MLflow; a missing alias or version is a final
``ModelLoadError``, an unreachable server a transient ``RegistryUnavailableError``.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from heimdall_stream.errors import ModelLoadError, RegistryUnavailableError
from heimdall_stream.models.registry import ModelRegistry

pytestmark = pytest.mark.integration

FETCH = """
import sys
from pathlib import Path
from heimdall_stream.models.registry import ModelRegistry
fetched = ModelRegistry(sys.argv[1], Path(sys.argv[2])).fetch(sys.argv[3])
print(fetched.version, fetched.from_cache, "mlflow" in sys.modules)
"""


def test_resolving_a_cached_version_never_imports_mlflow(mlflow_uri, model_uri, tmp_path):
    first = ModelRegistry(mlflow_uri, tmp_path).fetch(model_uri)  # downloads (through MLflow)
    out = subprocess.run(
        [sys.executable, "-c", FETCH, mlflow_uri, str(tmp_path), model_uri],
        capture_output=True,
        text=True,
        check=True,
    )
    version, from_cache, imported = out.stdout.split()
    assert version == first.version and from_cache == "False" and imported == "False"


def test_missing_names_are_final_and_an_unreachable_server_is_transient(mlflow_uri, model_uri, tmp_path):
    registry = ModelRegistry(mlflow_uri, tmp_path)
    name = model_uri.removeprefix("models:/").split("@")[0]
    for uri in (f"models:/{name}@no-such-alias", f"models:/{name}/9999", "models:/no_such_model@champion"):
        with pytest.raises(ModelLoadError, match="registry has no models:/"):
            registry.fetch(uri)
    with pytest.raises(ModelLoadError, match="no version in stage"):
        registry.fetch(f"models:/{name}/Production")
    with pytest.raises(RegistryUnavailableError, match="unreachable"):
        ModelRegistry("http://127.0.0.1:9", tmp_path).fetch(model_uri)
