"""The import graph, read from the source: no cycle, and every import points down the layers."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Lowest first; a module may import its own layer and the ones below, never one above.
LAYERS = ("base", "ingest", "indexer", "searcher", "monitor", "lifecycle", "commands")
PACKAGES = ("streamvec", "ingest", "indexer", "searcher", "monitor", "lifecycle")
# The command line and what renders it sit on top of everything they drive.
TOP = ("streamvec.commands", "streamvec.configdoc", "streamvec.__main__")


def layer(module: str) -> str:
    """The layer a module belongs to."""
    if module.startswith(TOP):
        return "commands"
    package = module.split(".")[0]
    return "base" if package == "streamvec" else package


def modules() -> dict[str, Path]:
    """Every module of the project's packages, by dotted name."""
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


def imports(path: Path, known: dict[str, Path]) -> set[str]:
    """The project modules that one file imports, at any depth of its code."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [f"{node.module}.{alias.name}" for alias in node.names]
            names = [n if n in known else node.module for n in names]
        else:
            continue
        found.update(n for n in names if n.split(".")[0] in PACKAGES)
    return found


def graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports."""
    known = modules()
    return {name: imports(path, known) - {name} for name, path in known.items()}


def cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, as the list of modules around it, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt]
            if nxt not in state and (found := visit(nxt, [*path, nxt])):
                return found
        state[node] = 2
        return None

    for start in sorted(edges):
        if start not in state and (found := visit(start, [start])):
            return found
    return None


def test_every_import_points_down_the_layers() -> None:
    upward = sorted(f"{a} ({layer(a)}) imports {b} ({layer(b)})"
                    for a, targets in graph().items() for b in targets
                    if LAYERS.index(layer(b)) > LAYERS.index(layer(a)))
    assert upward == []


def test_the_import_graph_has_no_cycle() -> None:
    edges = graph()
    # A package's __init__ importing its own modules is not a dependency between ideas.
    edges = {a: {b for b in bs if not a.startswith(b + ".")} for a, bs in edges.items()}
    assert cycle(edges) is None


def test_the_checks_see_an_upward_import_and_a_cycle() -> None:
    assert layer("streamvec.commands.indexer") == "commands"
    assert layer("streamvec.settings") == "base"
    assert LAYERS.index(layer("lifecycle.gc")) > LAYERS.index(layer("monitor.service"))
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": set()}) is None


def test_the_module_map_in_the_docs_names_every_module() -> None:
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    mapped = text[text.index("## Module map"):text.index("## Data path")]
    missing = sorted(str(path.relative_to(ROOT)) for name, path in modules().items()
                     if f"`{path.relative_to(ROOT)}`" not in mapped)
    assert missing == []
