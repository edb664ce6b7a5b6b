"""The built wheel is a working heimdall-stream on its own: installed into a clean virtual environment
(no system site-packages, not editable) and run from outside the checkout, it has its Avro schemas
and the reference receiver network, and writes captures its own codec reads back.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow

# Run inside the installed package: decode what `simulate --output` wrote, with the public API.
CHECK = textwrap.dedent(
    """
    import json, sys
    from importlib import resources
    import heimdall_stream
    from heimdall_stream.network import load_network
    from heimdall_stream.wire.codec import capture_codec, load_schema

    data = open(sys.argv[1], "rb").read()
    codec, network, captures, at = capture_codec(), load_network(), [], 0
    while at < len(data):
        size = int.from_bytes(data[at:at + 4], "big")
        captures.append(codec.decode(data[at + 4:at + 4 + size]))
        at += 4 + size
    schemas = sorted(p.name for p in resources.files("heimdall_stream").joinpath("schemas").iterdir())
    print(json.dumps({
        "package": heimdall_stream.__file__,
        "schemas": schemas,
        "parsed": [load_schema(name.removesuffix(".avsc"))["name"] for name in schemas],
        "receivers": len(network.ids),
        "captures": [[c.capture_id, [r.receiver_id for r in c.receivers]] for c in captures],
        "unknown": sorted({r.receiver_id for c in captures for r in c.receivers} - set(network.ids)),
    }))
    """
)


def _run(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 600) -> str:
    result = subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert result.returncode == 0, f"{args}: {result.stdout}\n{result.stderr}"
    return result.stdout


def test_the_wheel_installs_and_runs_in_a_clean_venv(tmp_path: Path):
    # Build from a copy of what a source distribution holds, so nothing outside the package
    # (the checkout's top-level schemas link, an editable install) can make the wheel look whole.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    # symlinks=True: a link inside the package to a file outside it would dangle here, as it does
    # in a source distribution or a checkout without symlinks.
    shutil.copytree(
        REPO / "heimdall_stream",
        src / "heimdall_stream",
        symlinks=True,
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("HEIMDALL_")}
    dist = tmp_path / "dist"
    _run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(dist), str(src)],
        src,
        env,
    )
    (wheel,) = dist.glob("heimdall_stream-*.whl")

    shipped = {p.name for p in (REPO / "heimdall_stream" / "schemas").glob("*.avsc")}
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    assert {f"heimdall_stream/schemas/{name}" for name in shipped} <= names
    assert "heimdall_stream/data/receivers.json" in names

    # A clean environment: the interpreter's own, without this session's site-packages.
    root = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True, system_site_packages=False, clear=True).create(root)
    _run([str(root / "bin" / "python"), "-m", "pip", "install", "--quiet", str(wheel)], tmp_path, env, 900)

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    cli = str(root / "bin" / "heimdall-stream")
    assert "simulate" in _run([cli, "--help"], outside, env)
    _run([cli, "simulate", "--count", "2", "--output", "captures.bin"], outside, env)
    report = json.loads(_run([str(root / "bin" / "python"), "-c", CHECK, "captures.bin"], outside, env))

    assert Path(report["package"]).is_relative_to(root), report["package"]
    assert set(report["schemas"]) == shipped
    assert all(name.startswith("org.heimdall.stream.") for name in report["parsed"])
    assert report["receivers"] >= 3
    assert len(report["captures"]) == 2
    assert all(len(receivers) >= 3 for _, receivers in report["captures"])
    assert report["unknown"] == []
