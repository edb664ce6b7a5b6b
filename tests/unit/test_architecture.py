"""Architecture rules, read from the code: module size, the corridor, the lab, cycles, the picture.

Everything comes from ``docs/wings.py``, which parses the package with ``ast`` (no imports), so
these rules and ``docs/architecture.md`` see the same graph.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE_DIR = REPO / "heimdall_stream"
MAX_LINES = 400
SERVING_WINGS = {"stream", "processing", "models", "control", "wire"}
# stream.app may see the processing wing only through its front door and the values it returns.
APP_MAY_IMPORT = {"heimdall_stream.processing.processor", "heimdall_stream.processing.records"}
# Wing cycles allowed: none (Kafka client configuration lives in the top-level ``clients``,
# shared by stream, control and lab, so the control plane never imports the stream wing).
KNOWN_CYCLES: list[list[str]] = []


def _load_wings() -> ModuleType:
    name = "heimdall_docs_wings"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO / "docs" / "wings.py")
    if spec is None or spec.loader is None:
        raise ImportError("docs/wings.py not found")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


wings = _load_wings()


@pytest.fixture(scope="module")
def graph() -> Any:
    return wings.scan(PACKAGE_DIR)


def test_architecture_doc_is_up_to_date(graph: Any) -> None:
    current = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
    assert wings.render(graph) == current, (
        f"docs/architecture.md is stale: regenerate it with `{wings.REGENERATE}` "
        "(python docs/wings.py) and commit the result"
    )


def test_no_module_is_over_the_line_limit(graph: Any) -> None:
    too_long = {m.name: m.lines for m in graph.modules.values() if m.lines > MAX_LINES}
    assert not too_long, f"modules over {MAX_LINES} lines (split them by job): {too_long}"


def test_stream_app_reaches_processing_only_through_the_processor(graph: Any) -> None:
    forbidden = sorted(
        {
            i.target
            for i in graph.imports
            if i.source == "heimdall_stream.stream.app"
            and wings.wing_of(i.target) == "processing"
            and i.target not in APP_MAY_IMPORT
        }
    )
    assert not forbidden, f"stream.app imports {forbidden}; use processing.processor (and records)"


def test_the_serving_path_never_imports_the_lab(graph: Any) -> None:
    offenders = sorted(
        f"{i.source} -> {i.target}"
        for i in graph.imports
        if wings.wing_of(i.source) in SERVING_WINGS and wings.wing_of(i.target) == "lab"
    )
    assert not offenders, f"the lab is off the serving path: {offenders}"


def test_no_new_import_cycles_between_wings(graph: Any) -> None:
    cycles = wings.wing_cycles(graph)
    new = [cycle for cycle in cycles if cycle not in KNOWN_CYCLES]
    assert not new, f"wings importing each other: {new} (see docs/architecture.md for the imports)"


def test_the_scanner_sees_lazy_relative_and_type_only_imports(tmp_path: Path) -> None:
    package = tmp_path / "heimdall_stream"
    (package / "stream").mkdir(parents=True)
    (package / "lab").mkdir()
    (package / "__init__.py").write_text('"""Root."""\n')
    (package / "stream" / "__init__.py").write_text('"""The stream wing."""\n')
    (package / "lab" / "__init__.py").write_text('"""The lab wing."""\n')
    (package / "config.py").write_text('"""Settings."""\n')
    (package / "lab" / "demo.py").write_text('"""Demo."""\n')
    (package / "stream" / "app.py").write_text(
        '"""App.\n\nMore."""\n'
        "from typing import TYPE_CHECKING\n"
        "from ..config import Settings\n"
        "from . import batching\n"
        "if TYPE_CHECKING:\n"
        "    from heimdall_stream.lab.demo import run_demo\n"
    )
    (package / "stream" / "batching.py").write_text(
        '"""Batching."""\ndef f():\n    import heimdall_stream.lab.demo\n'
    )
    graph = wings.scan(package)
    found = {(i.source, i.target, i.eager) for i in graph.imports}
    assert found == {
        ("heimdall_stream.stream.app", "heimdall_stream.config", True),
        ("heimdall_stream.stream.app", "heimdall_stream.stream.batching", True),
        ("heimdall_stream.stream.app", "heimdall_stream.lab.demo", False),
        ("heimdall_stream.stream.batching", "heimdall_stream.lab.demo", False),
    }
    assert graph.wing_edges() == {("stream", "config"): True, ("stream", "lab"): False}
    assert graph.modules["heimdall_stream.stream.app"].summary == "App."
    text = wings.render(graph)
    assert "stream --> config" in text and "stream -.-> lab" in text
    assert "### `stream/`: The stream wing." in text
