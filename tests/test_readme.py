"""Every Python example in README.md runs as written, against the default model, in a fresh interpreter.

Blocks with top-level ``await`` (as in a notebook) run inside ``asyncio.run``. A block preceded by an HTML comment
starting ``<!-- not run`` is skipped by design and says why (it needs a model hub, or a reranker GGUF that the
reranking tests build and exercise themselves); nothing else is.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
_BLOCK = re.compile(r"(<!-- not run([^>]*)-->\s*)?```python\n(.*?)```", re.S)


def _blocks() -> list[tuple[int, str]]:
    text = README.read_text(encoding="utf-8")
    found = []
    for match in _BLOCK.finditer(text):
        if match.group(1):
            continue
        line = text.count("\n", 0, match.start(3)) + 1
        found.append((line, match.group(3)))
    return found


BLOCKS = _blocks()
# the scale-out example starts a local Ray cluster: a short private temp dir (socket paths) and no auth token
_RAY_ENV = {"RAY_TMPDIR": tempfile.mkdtemp(prefix="ray-readme-", dir="/tmp"), "RAY_AUTH_MODE": "disabled"}


def _runnable(code: str) -> str:
    if not re.search(r"^\S[^\n]*\bawait\b", code, re.M):  # top-level await only (as in a notebook)
        return code
    return "import asyncio\n\n\nasync def _main():\n" + textwrap.indent(code, "    ") + "\n\nasyncio.run(_main())\n"


def test_readme_has_examples() -> None:
    assert len(BLOCKS) >= 7
    skipped = [m.group(2) for m in _BLOCK.finditer(README.read_text(encoding="utf-8")) if m.group(1)]
    assert all(any(w in why for w in ("hub", "reranker", "server")) for why in skipped), skipped  # each says why


@pytest.mark.parametrize(("line", "code"), BLOCKS, ids=[f"README.md:{line}" for line, _ in BLOCKS])
def test_readme_example_runs(line: int, code: str, model_path: Path, tmp_path: Path) -> None:
    env_code = _runnable(code)
    proc = subprocess.run(
        [sys.executable, "-c", env_code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "EMBELLAMA_MODEL_PATH": str(model_path), **_RAY_ENV},
    )
    assert proc.returncode == 0, f"README.md line {line} failed:\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr
