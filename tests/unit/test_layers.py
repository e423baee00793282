"""The package's layers are folders, and each imports only downwards (read from the source with ``ast``).

Top to bottom: ``cli`` → the product faces ``server`` and ``ingest`` (and the adapters in
``embellama_integrations``) → ``engine`` → ``runtime`` → ``model`` → ``files`` → the shared modules at the package
root (errors, types, config, ...). ``embellama/__init__.py`` is the facade and may import any layer below the faces.
Only ``embellama/model/`` imports ``llama_cpp``; nothing in ``embellama`` imports ``embellama_integrations``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "core" / "embellama"
ADAPTERS = ROOT / "embellama_integrations"
RANK = {"files": 1, "model": 2, "runtime": 3, "engine": 4, "server": 5, "ingest": 5, "cli": 6}
"""A layer's height; the modules at the package root (``errors``, ``types``, ``config``, ...) are 0."""
FACES = 5
ADAPTER_RANK = 5


def _layer(module: str) -> str:
    parts = module.split(".")
    if parts[0] == "embellama_integrations":
        return "adapters"
    return parts[1] if len(parts) > 1 and parts[1] in RANK else "root"


def _rank(module: str) -> int:
    layer = _layer(module)
    return ADAPTER_RANK if layer == "adapters" else RANK.get(layer, 0)


def _module_name(path: Path) -> str:
    base = PACKAGE.parent if path.is_relative_to(PACKAGE) else ROOT
    parts = list(path.relative_to(base).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports (also inside functions), as absolute names."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import (the layers are read from absolute names)"
            assert node.module is not None
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


SOURCES = sorted(PACKAGE.rglob("*.py")) + sorted(ADAPTERS.rglob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_go_only_downwards(path: Path) -> None:
    module = _module_name(path)
    own = _rank(module)
    facade = module == "embellama"
    for imported in _imports(path):
        top = imported.split(".")[0]
        if top == "llama_cpp":
            assert _layer(module) == "model", f"{module} imports llama_cpp: only embellama.model may"
        if top not in ("embellama", "embellama_integrations") or imported in ("embellama", "embellama.__version__"):
            continue
        assert not (top == "embellama_integrations" and module.startswith("embellama.")), f"{module} → {imported}"
        if facade:
            assert _rank(imported) < FACES, f"the facade imports the product face {imported}"
            continue
        theirs = _rank(imported)
        assert theirs <= own, f"{module} (layer {_layer(module)}) imports {imported} (layer {_layer(imported)}) upwards"
        if own == theirs:
            assert _layer(module) == _layer(imported), f"{module} imports its sibling layer {imported}"


def test_the_layers_are_the_folders() -> None:
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert folders == set(RANK)
    assert {p.stem for p in ADAPTERS.glob("*.py")} <= {"__init__", "_options", "langchain", "llama_index"}
