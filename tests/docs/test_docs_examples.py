"""Every Python example in README.md and docs/*.md runs as written, against the default model, in a fresh interpreter.

Blocks with top-level ``await`` (as in a notebook) run inside ``asyncio.run``. A block preceded by an HTML comment
starting ``<!-- not run`` is skipped by design and says why (it needs a model hub, a reranker GGUF that the
reranking tests build and exercise themselves, or a running server that the server tests start); nothing else is.
The pages themselves are checked too: the README stays short and its links resolve, and every page under docs/ is in
the site's nav (mkdocs build --strict, in `make test`, checks the links of the docs/ pages).
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

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = [README, *sorted(DOCS.glob("*.md"))]
README_MAX_BYTES = 10_000
_BLOCK = re.compile(r"(<!-- not run([^>]*)-->\s*)?```python\n(.*?)```", re.S)


def _name(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


def _blocks() -> list[tuple[str, int, str]]:
    found = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for match in _BLOCK.finditer(text):
            if match.group(1):
                continue
            line = text.count("\n", 0, match.start(3)) + 1
            found.append((_name(page), line, match.group(3)))
    return found


def _skip_reasons() -> dict[str, list[str]]:
    return {_name(p): [m.group(2) for m in _BLOCK.finditer(p.read_text(encoding="utf-8")) if m.group(1)] for p in PAGES}


BLOCKS = _blocks()
# the scale-out example starts a local Ray cluster: a short private temp dir (socket paths) and no auth token
_RAY_ENV = {"RAY_TMPDIR": tempfile.mkdtemp(prefix="ray-docs-", dir="/tmp"), "RAY_AUTH_MODE": "disabled"}


def _runnable(code: str) -> str:
    if not re.search(r"^\S[^\n]*\bawait\b", code, re.M):  # top-level await only (as in a notebook)
        return code
    return "import asyncio\n\n\nasync def _main():\n" + textwrap.indent(code, "    ") + "\n\nasyncio.run(_main())\n"


def test_docs_have_examples() -> None:
    pages = {page for page, _, _ in BLOCKS}
    assert len(BLOCKS) >= 10, BLOCKS
    assert {"README.md", "docs/architecture.md", "docs/scale-out.md", "docs/reliability-isolation.md"} <= pages
    assert sum(page == "README.md" for page, _, _ in BLOCKS) == 3  # the quickstarts: engine, LangChain, LlamaIndex


def test_every_skipped_example_says_why() -> None:
    reasons = _skip_reasons()
    says_why = ("hub", "reranker", "server", "tests/")  # or the test that runs the same code
    bad = {page: why for page, whys in reasons.items() for why in whys if not any(w in why for w in says_why)}
    assert not bad, bad
    assert sum(map(len, reasons.values())) >= 1  # the convention is in use, so this check can fail


def test_readme_is_short() -> None:
    assert README.stat().st_size <= README_MAX_BYTES, f"README.md is {README.stat().st_size} bytes"


def _slug(heading: str) -> str:
    """The anchor of a heading, as Python-Markdown's toc and GitHub make it."""
    text = re.sub(r"[^\w\- ]", "", heading.replace("`", "").strip().lower())
    return re.sub(r"\s", "-", text)


def test_readme_links_resolve() -> None:
    """README.md is outside the site, so mkdocs does not check its links: every relative link and anchor exists."""
    links = re.findall(r"\]\(([^)\s]+)\)", README.read_text(encoding="utf-8"))
    relative = [link for link in links if "://" not in link]
    assert relative, links
    for link in relative:
        path, _, anchor = link.partition("#")
        target = (ROOT / path) if path else README
        assert target.exists(), f"README.md links to a missing {path}"
        if anchor:
            headings = re.findall(r"^#+ (.+)$", target.read_text(encoding="utf-8"), re.M)
            assert anchor in {_slug(h) for h in headings}, f"README.md links to a missing anchor {link}"


def test_every_page_is_in_the_site_nav() -> None:
    yaml = pytest.importorskip("yaml")
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))

    def files(entries: list[object]) -> list[str]:
        out: list[str] = []
        for entry in entries:
            value = next(iter(entry.values())) if isinstance(entry, dict) else entry
            out.extend(files(value) if isinstance(value, list) else [str(value)])
        return out

    nav = files(config["nav"])
    assert sorted(nav) == sorted(p.name for p in DOCS.glob("*.md")), "add new docs pages to mkdocs.yml's nav"


@pytest.mark.parametrize(("page", "line", "code"), BLOCKS, ids=[f"{page}:{line}" for page, line, _ in BLOCKS])
def test_docs_example_runs(page: str, line: int, code: str, model_path: Path, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _runnable(code)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "EMBELLAMA_MODEL_PATH": str(model_path), **_RAY_ENV},
    )
    assert proc.returncode == 0, f"{page} line {line} failed:\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr
