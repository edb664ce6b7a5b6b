"""The container image builds here and works: the CLI, the non-root user, the schemas and the network.

It is built by ``deploy/image/image build`` (what ``make image`` runs): with a Docker engine if one
answers, else daemonless with buildah on a Debian base assembled by mmdebstrap. Without either
builder the test is skipped with the reason; ``HEIMDALL_TEST_IMAGE=0`` skips it on purpose (the
first build takes minutes: the base image, then every dependency from the package index).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.integration.test_wheel import CHECK

REPO = Path(__file__).resolve().parents[2]
TOOL = REPO / "deploy" / "image" / "image"
IMAGE = "heimdall-stream:local"
pytestmark = [pytest.mark.reliability, pytest.mark.slow]


def _tool(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HEIMDALL_IMAGE": IMAGE}
    return subprocess.run(
        [str(TOOL), *args], capture_output=True, text=True, timeout=timeout, check=False, env=env, cwd=REPO
    )


def _in_image(*command: str) -> str:
    result = _tool("run", *command)
    assert result.returncode == 0, f"{command}: {result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def built_image() -> str:
    """Build the image (cached layers make a rebuild quick); return the builder's report line."""
    if os.environ.get("HEIMDALL_TEST_IMAGE") == "0":
        pytest.skip("unavailable: HEIMDALL_TEST_IMAGE=0 turns the image build off")
    builder = _tool("builder")
    if builder.returncode != 0:
        pytest.skip(f"unavailable: no image builder: {builder.stdout.strip()} {builder.stderr.strip()}")
    result = _tool("build", timeout=3600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    built = [line for line in result.stderr.splitlines() if line.startswith("image: built")]
    assert built, result.stderr[-4000:]
    return built[-1]


@pytest.mark.timeout(3600)
def test_image_runs_the_cli_as_a_non_root_user_with_its_schemas(built_image: str):
    usage = _in_image("heimdall-stream", "--help")
    assert "simulate" in usage and "run" in usage
    uid = _in_image("id", "-u").strip()
    assert uid == "10001", f"the image runs as uid {uid}"

    # simulate writes two captures; the installed package's codec reads them back.
    script = (
        "heimdall-stream simulate --count 2 --output /tmp/captures.bin >&2"
        ' && exec python -c "$0" /tmp/captures.bin'
    )
    report = json.loads(_in_image("sh", "-c", script, CHECK))
    shipped = {p.name for p in (REPO / "heimdall_stream" / "schemas").glob("*.avsc")}
    assert report["package"].startswith("/opt/heimdall-stream/"), report["package"]
    assert set(report["schemas"]) == shipped
    assert len(report["captures"]) == 2 and report["unknown"] == []

    # The allocator `run` can preload (HEIMDALL_MEMORY__ALLOCATOR=auto or jemalloc) is in the image.
    found = "from heimdall_stream.stream.preload import find_library; print(find_library(''))"
    jemalloc = _in_image("python", "-c", found).strip()
    assert jemalloc.endswith("/libjemalloc.so.2"), jemalloc

    config = json.loads(_tool("config").stdout)
    assert config["User"] == "10001:10001"
    assert config["Entrypoint"] == ["heimdall-stream"]
    # Only the Docker image format keeps the health check (OCI drops it).
    assert "/healthz" in " ".join(config["Healthcheck"]["Test"])
    print(f"{built_image}\nuid {uid}; jemalloc {jemalloc}")
    print(f"schemas {sorted(report['schemas'])}; captures {report['captures']}")
