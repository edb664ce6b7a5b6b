"""Draw the wings of heimdall_stream and their imports, from the code itself.

Reads every ``heimdall_stream/**/*.py`` with ``ast`` (nothing is imported or run), finds the
imports between the package's modules, and writes ``docs/architecture.md``: a Mermaid graph
of wing → wing imports and, per wing, its modules with the first line of their docstrings.
A wing is a subpackage (``stream``, ``processing``, ...) or a top-level module (``config``,
``cli``, ...).  Run ``make docs`` (or ``python docs/wings.py``) after adding, moving or
re-documenting a module; ``--check`` only says whether the file is up to date.

Standard library only, so it runs before any dependency is installed.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

PACKAGE = "heimdall_stream"
REPO = Path(__file__).resolve().parents[1]
OUTPUT = REPO / "docs" / "architecture.md"
REGENERATE = "make docs"


@dataclass(frozen=True)
class Import:
    """One import of a package module by another; ``eager`` when it runs at module load."""

    source: str
    target: str
    eager: bool


@dataclass
class Module:
    """A module of the package: dotted name, file, line count, docstring summary."""

    name: str
    path: Path
    lines: int
    summary: str

    @property
    def wing(self) -> str:
        """The subpackage it belongs to, or its own name for a top-level module."""
        return wing_of(self.name)


@dataclass
class Graph:
    """The package's modules and the imports between them."""

    modules: dict[str, Module] = field(default_factory=dict)
    imports: list[Import] = field(default_factory=list)
    wing_summaries: dict[str, str] = field(default_factory=dict)

    def wing_edges(self) -> dict[tuple[str, str], bool]:
        """(importing wing, imported wing) → whether any of those imports is eager."""
        edges: dict[tuple[str, str], bool] = {}
        for imp in self.imports:
            key = (wing_of(imp.source), wing_of(imp.target))
            if key[0] != key[1]:
                edges[key] = edges.get(key, False) or imp.eager
        return edges

    def wings(self) -> list[str]:
        """Subpackages first, then top-level modules, each alphabetically."""
        names = {m.wing for m in self.modules.values()}
        return sorted(names, key=lambda w: (not self.is_package(w), w))

    def is_package(self, wing: str) -> bool:
        """Whether the wing is a subpackage (rather than a top-level module)."""
        return any(m.name.startswith(f"{PACKAGE}.{wing}.") for m in self.modules.values())


def wing_cycles(graph: Graph) -> list[list[str]]:
    """Groups of wings that import each other, directly or round a loop (eager or lazy).

    Tarjan's strongly connected components of the wing graph, keeping those of two or more.
    """
    successors: dict[str, list[str]] = {wing: [] for wing in graph.wings()}
    for source, target in sorted(graph.wing_edges()):
        successors.setdefault(source, []).append(target)
        successors.setdefault(target, [])
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(wing: str) -> None:
        index[wing] = low[wing] = len(index)
        stack.append(wing)
        for nxt in successors[wing]:
            if nxt not in index:
                visit(nxt)
                low[wing] = min(low[wing], low[nxt])
            elif nxt in stack:
                low[wing] = min(low[wing], index[nxt])
        if low[wing] == index[wing]:
            component: list[str] = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == wing:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for wing in successors:
        if wing not in index:
            visit(wing)
    return sorted(cycles)


def wing_of(module: str) -> str:
    """``heimdall_stream.stream.app`` → ``stream``; ``heimdall_stream.config`` → ``config``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def scan(package_dir: Path) -> Graph:
    """Parse every module under ``package_dir`` and collect its imports of the package."""
    graph = Graph()
    trees: dict[str, tuple[ast.Module, bool]] = {}
    for path in sorted(package_dir.rglob("*.py")):
        relative = path.relative_to(package_dir.parent).with_suffix("")
        is_init = relative.name == "__init__"
        name = ".".join(relative.parent.parts if is_init else relative.parts)
        text = path.read_text(encoding="utf-8")
        tree = ast.parse(text, filename=str(path))
        trees[name] = (tree, is_init)
        summary = _summary(tree)
        if is_init and name.count(".") < 2:
            # The package's and each wing's __init__ only describe them: not nodes of their own.
            graph.wing_summaries[wing_of(name)] = summary
            continue
        graph.modules[name] = Module(name, path, len(text.splitlines()), summary)
    known = set(trees)
    for name, (tree, is_init) in trees.items():
        for target, eager in _imports(tree, name, is_init, known):
            if target not in (name, PACKAGE):
                graph.imports.append(Import(name, target, eager))
    return graph


def _summary(tree: ast.Module) -> str:
    doc = ast.get_docstring(tree) or ""
    first = doc.strip().split("\n\n")[0]
    return " ".join(first.split())


def _imports(tree: ast.Module, name: str, is_init: bool, known: set[str]) -> Iterator[tuple[str, bool]]:
    """(imported package module, eager) for each import in the module's tree."""
    for node, eager in _walk(tree, eager=True):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = _known_prefix(alias.name, known)
                if target:
                    yield target, eager
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, name, is_init)
            for alias in node.names:
                # ``from pkg import mod`` imports a module; ``from mod import thing`` a name.
                target = _known_prefix(f"{base}.{alias.name}", known) or _known_prefix(base, known)
                if target:
                    yield target, eager


def _walk(node: ast.AST, eager: bool) -> Iterator[tuple[ast.AST, bool]]:
    """Every node with whether it runs at import: not inside a function or ``if TYPE_CHECKING``."""
    for child in ast.iter_child_nodes(node):
        yield child, eager
        lazy = isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) or (
            isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test)
        )
        yield from _walk(child, eager and not lazy)


def _absolute(node: ast.ImportFrom, name: str, is_init: bool) -> str:
    if not node.level:
        return node.module or ""
    parts = name.split(".")
    package = parts if is_init else parts[:-1]
    base = package[: len(package) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def _known_prefix(dotted: str, known: set[str]) -> str | None:
    """The longest package module that ``dotted`` names or lies in."""
    if not dotted.startswith(PACKAGE):
        return None
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in known:
            return candidate
    return None


def _node(graph: Graph, wing: str) -> str:
    return f'{wing}["{wing}/"]' if graph.is_package(wing) else f'{wing}(["{wing}.py"])'


def render(graph: Graph) -> str:
    """The Markdown text of ``docs/architecture.md``."""
    wings = graph.wings()
    out = [
        "# Architecture: the wings and their imports",
        "",
        f"<!-- Generated by docs/wings.py from the imports in {PACKAGE}/: do not edit. "
        f"Regenerate with `{REGENERATE}`. -->",
        "",
        "A wing is a subpackage of `heimdall_stream` (a box) or a top-level module (a rounded",
        "box). An arrow `A --> B` means a module of A imports a module of B when it is loaded; a",
        "dotted arrow `A -.-> B`, that it does so only inside a function (a lazy import) or for",
        "type checking.",
        "",
        "```mermaid",
        "graph LR",
    ]
    out += [f"    {_node(graph, wing)}" for wing in wings]
    for (source, target), eager in sorted(graph.wing_edges().items()):
        out.append(f"    {source} {'-->' if eager else '-.->'} {target}")
    out += ["```", ""]
    cycles = wing_cycles(graph)
    if cycles:
        out.append("Wings that import each other (round a loop):")
        out.append("")
        for cycle in cycles:
            through = [
                f"`{i.source.removeprefix(PACKAGE + '.')}` → `{i.target.removeprefix(PACKAGE + '.')}`"
                for i in sorted(graph.imports, key=lambda i: (i.source, i.target))
                if wing_of(i.source) in cycle
                and wing_of(i.target) in cycle
                and wing_of(i.source) != wing_of(i.target)
            ]
            out.append(f"- {', '.join(cycle)}: {', '.join(dict.fromkeys(through))}")
        out.append("")
    else:
        out += ["No two wings import each other.", ""]
    out += ["## Modules", ""]
    for wing in (w for w in wings if graph.is_package(w)):
        out += [f"### `{wing}/`: {graph.wing_summaries.get(wing, '')}", ""]
        members = sorted((m for m in graph.modules.values() if m.wing == wing), key=lambda m: m.name)
        out += [f"- `{m.name.removeprefix(PACKAGE + '.')}`: {m.summary}" for m in members]
        out.append("")
    out += ["### Top-level modules", ""]
    tops = sorted((m for m in graph.modules.values() if not graph.is_package(m.wing)), key=lambda m: m.name)
    out += [f"- `{m.name.removeprefix(PACKAGE + '.')}`: {m.summary}" for m in tops]
    out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    """Write ``docs/architecture.md`` (or with ``--check``, exit 1 when it is stale)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="only check that the file is up to date")
    args = parser.parse_args(argv)
    text = render(scan(REPO / PACKAGE))
    current = OUTPUT.read_text(encoding="utf-8") if OUTPUT.exists() else ""
    if args.check:
        if text != current:
            print(f"{OUTPUT.relative_to(REPO)} is stale: run `{REGENERATE}`", file=sys.stderr)
            return 1
        return 0
    if text != current:
        OUTPUT.write_text(text, encoding="utf-8")
        print(f"wrote {OUTPUT.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
