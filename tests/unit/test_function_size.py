"""No function or method in ``embellama/server/`` is longer than 50 lines (from its ``def`` line to its last line,
docstring included): the server stays in small pieces, each readable at once."""

from __future__ import annotations

import ast
from pathlib import Path

import embellama

MAX_LINES = 50
SERVER = Path(embellama.__file__).parent / "server"


def long_functions(path: Path, limit: int = MAX_LINES) -> list[str]:
    """``"file:line name (n lines)"`` for each function or method (nested ones too) in ``path`` over ``limit``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            if length > limit:
                out.append(f"{path.name}:{node.lineno} {node.name} ({length} lines)")
    return out


def test_the_checker_finds_a_long_function(tmp_path: Path) -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_LINES))
    source = tmp_path / "m.py"
    source.write_text(f"class C:\n    def ok(self) -> None:\n        pass\n\n\ndef long() -> None:\n{body}\n")
    assert long_functions(source) == [f"m.py:6 long ({MAX_LINES + 1} lines)"]
    assert long_functions(source, limit=MAX_LINES + 1) == []


def test_no_server_function_is_over_50_lines() -> None:
    modules = sorted(SERVER.glob("*.py"))
    assert len(modules) >= 5, modules  # the server package is where this test thinks it is
    found = [entry for module in modules for entry in long_functions(module)]
    assert not found, f"functions over {MAX_LINES} lines in embellama/server/: {found}"
