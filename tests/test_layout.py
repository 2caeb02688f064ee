"""The code's shape: no import circles between our modules, and small modules.

Imports are read from the source (every import statement, those under TYPE_CHECKING and inside
functions included), so a circle hidden behind a late import still counts.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Folder -> the package it installs as (pyproject.toml maps models/ and connectors/ under streamd).
PACKAGES = {"streamd": "streamd", "models": "streamd.models", "connectors": "streamd.connectors"}
MAX_LINES = 300
# Over MAX_LINES, each with why it is still one module (a ratchet: nothing new may join).
LARGE_MODULES = {
    "streamd/service/daemon.py": "the loop for one process and each torchrun rank; batching, dead letters, wiring already split out",
    "connectors/kafka.py": "one consumer's position bookkeeping under one lock; helpers already split out",
}


def module_files() -> dict[str, Path]:
    files = {}
    for folder, package in PACKAGES.items():
        for path in (ROOT / folder).rglob("*.py"):
            name = ".".join((package, *path.relative_to(ROOT / folder).with_suffix("").parts))
            files[name.removesuffix(".__init__")] = path
    return files


def import_graph() -> dict[str, set[str]]:
    files = module_files()

    def ours(name: str) -> str | None:
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for name, path in files.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets |= {ours(alias.name) for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                # "from pkg import mod" imports the submodule; "from mod import name" the module
                targets |= {ours(f"{node.module}.{alias.name}") if f"{node.module}.{alias.name}" in files
                            else ours(node.module) for alias in node.names}
        graph[name] = targets - {None, name}
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while not component or component[-1] != v:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_circles():
    assert circles(import_graph()) == []


def test_the_circle_finder_finds_a_circle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert circles(graph) == [["a", "b", "c"]]


def test_plugins_do_not_see_the_learner():
    graph = import_graph()
    assert all("streamd.learning.learner" not in graph[m] for m in graph if m.startswith("streamd.learning.plugins"))


def test_modules_stay_small():
    sizes = {str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for p in module_files().values()}
    large = {path for path, lines in sizes.items() if lines > MAX_LINES}
    assert large <= set(LARGE_MODULES), f"over {MAX_LINES} lines: {sorted(large - set(LARGE_MODULES))}"
    assert all(sizes[path] > MAX_LINES for path in LARGE_MODULES), "shrunk below the limit: drop it from the list"


def test_models_and_connectors_are_imported_under_the_streamd_namespace():
    """Top-level ``models``/``connectors`` packages would clash with users' own modules."""
    stray = [f"{name}: {module}" for name, path in module_files().items()
             for node in ast.walk(ast.parse(path.read_text()))
             for module in ([a.name for a in node.names] if isinstance(node, ast.Import)
                            else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
             if module.split(".")[0] in ("models", "connectors")]
    assert stray == []


def test_encoders_objectives_and_plugins_are_picked_through_one_registry_style():
    """Every name configuration can pick resolves through a Registry, filled where each class is defined."""
    from streamd.models.encoders import ENCODERS, ResNetEncoder
    from streamd.models.objectives import OBJECTIVES
    from streamd.models.registry import Registry
    from streamd.learning.plugins import PLUGINS

    assert all(isinstance(r, Registry) for r in (ENCODERS, OBJECTIVES, PLUGINS))
    assert {"resnet18", "resnet50", "resnet_tiny", "vit_small"} <= set(ENCODERS)
    assert ENCODERS.lookup("resnet_tiny") is ResNetEncoder
    assert sorted(OBJECTIVES) == ["barlow", "byol", "mocov3", "simclr", "simsiam", "vicreg"]
    assert {"cassle", "kaizen", "replay", "lump", "freeze", "mas", "ewc", "exssnet"} <= set(PLUGINS)
    for registry in (OBJECTIVES, PLUGINS):   # a class registered under one name knows it
        assert all(cls.name == name for name, cls in registry.items())
    with pytest.raises(ValueError, match=r"unknown objective 'dino'; allowed: barlow, byol"):
        OBJECTIVES.lookup("dino")


def test_layers_import_downwards_only():
    """models/connectors < learning < service < CLI: the learning side has no service parts (no I/O
    loop, no API), and models/connectors know nothing of either."""
    above = {"streamd.models": ("streamd.connectors", "streamd.learning"),   # what else each may not import
             "streamd.connectors": ("streamd.models", "streamd.learning"), "streamd.learning": ()}
    upper = ("streamd.service", "streamd.bench", "streamd.commands", "streamd.cli", "streamd.config")
    graph = import_graph()
    upward = sorted(f"{m} -> {t}" for m, targets in graph.items() for layer in above if m.startswith(layer)
                    for t in targets if t.startswith(upper + above[layer]))
    assert upward == []
    assert any(t.startswith("streamd.learning") for t in graph["streamd.service.daemon"])   # the check sees imports
