"""The package as a user gets it: ``python -m build`` makes an sdist and a wheel (built from that sdist), the wheel
installs into a fresh venv with the documented extras, and the README's quickstart, LangChain and LlamaIndex
examples run there — outside this checkout, with nothing from the development environment.

llama-cpp-python comes from the wheel this machine built (``scripts/build_llama_cpp.py``, cached under
``$EMBELLAMA_CACHE/wheels``), never compiled here; everything else comes from the package index (pip's cache makes
later runs fast). The default model is the one already built in ``$EMBELLAMA_CACHE``.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

import embellama
from tests.docs.test_docs_examples import README, _runnable

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ("Quickstart", "LangChain", "LlamaIndex")  # the README's three quickstart blocks, in this order


def _example(section: str) -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index("\n## Quickstart\n")
    end = text.index("\n## ", start + 1)
    blocks = re.compile(r"```python\n(.*?)```", re.S).findall(text, start, end)
    assert len(blocks) == len(EXAMPLES), blocks
    return _runnable(blocks[EXAMPLES.index(section)])


def _llama_wheel() -> Path:
    spec = importlib.util.spec_from_file_location("build_llama_cpp", ROOT / "scripts" / "build_llama_cpp.py")
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    wheels = sorted(script.wheel_dir(cuda=os.environ.get("EMBELLAMA_CUDA", "") not in ("", "0")).glob("*.whl"))
    if not wheels:
        pytest.skip("no cached llama-cpp-python wheel (run scripts/build_llama_cpp.py)")
    return wheels[-1]


def _source_tree(dest: Path) -> Path:
    """This checkout's files (tracked and new, not ignored) copied to ``dest``: the build never writes here."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    return dest


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs a git checkout")
    work = tmp_path_factory.mktemp("build")
    tree = _source_tree(work / "src")
    out = work / "dist"
    proc = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(tree)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


def test_build_makes_an_sdist_and_a_wheel_with_the_metadata(dist: Path) -> None:
    version = embellama.__version__
    sdist, wheel = dist / f"embellama-{version}.tar.gz", dist / f"embellama-{version}-py3-none-any.whl"
    assert sorted(p.name for p in dist.iterdir()) == sorted([sdist.name, wheel.name])
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    for needed in ("core/embellama/__init__.py", "core/embellama/cli/main.py", "core/embellama/py.typed",
                   "embellama_integrations/py.typed", "core/embellama/server/app.py", "README.md", "LICENSE",
                   "pyproject.toml", "docs/cli.md"):  # fmt: skip
        assert needed in names, needed
    with zipfile.ZipFile(wheel) as whl:
        files = set(whl.namelist())
        meta = Parser().parsestr(whl.read(f"embellama-{version}.dist-info/METADATA").decode())
        entry_points = whl.read(f"embellama-{version}.dist-info/entry_points.txt").decode()
    packaged = {"embellama/py.typed", "embellama_integrations/py.typed", "embellama/cli/main.py"}
    assert packaged | {"embellama/server/app.py", "embellama/ingest/ray.py"} <= files
    assert not any(f.startswith(("tests/", "core/", "benchmarks/")) for f in files)
    assert "embellama = embellama.cli:main" in entry_points
    assert meta["Version"] == version and meta["License-Expression"] == "Apache-2.0"
    assert meta["Requires-Python"] == ">=3.10" and meta["Author"] and "rag" in meta["Keywords"].split(",")
    classifiers = meta.get_all("Classifier") or []
    assert "Typing :: Typed" in classifiers and "Programming Language :: Python :: 3.10" in classifiers
    urls = dict(u.split(", ", 1) for u in meta.get_all("Project-URL") or [])
    assert {"Homepage", "Documentation", "Repository", "Issues"} <= set(urls)
    extras = set(meta.get_all("Provides-Extra") or [])
    assert {"langchain", "llama-index", "server", "model", "progress", "hub", "lancedb", "ray"} <= extras
    assert meta.get_payload().startswith("# embellama")  # the README is the long description


@pytest.mark.stress  # over 2 minutes: installing the 80 packages of the two extras took 75-110 s alone (`make stress`)
def test_the_wheel_installs_into_a_fresh_venv_and_the_readme_examples_run(
    dist: Path, model_path: Path, tmp_path: Path
) -> None:
    llama = _llama_wheel()
    wheel = next(dist.glob("embellama-*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["EMBELLAMA_CACHE"] = str(model_path.parent.parent)  # the default model already built here
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--no-compile", "--disable-pip-version-check", str(llama),
         f"{wheel}[langchain,llama-index]"],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert install.returncode == 0, install.stderr[-3000:]
    where = subprocess.run(
        [str(python), "-c", "import embellama, embellama_integrations; print(embellama.__file__)"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert where.returncode == 0 and where.stdout.strip().startswith(str(venv)), where.stdout + where.stderr
    version = subprocess.run([str(venv / "bin" / "embellama"), "--version"], capture_output=True, text=True, env=env)
    assert version.returncode == 0 and version.stdout.startswith(f"embellama {embellama.__version__} ")
    embed = subprocess.run(
        [str(venv / "bin" / "embellama"), "embed", "-o", str(tmp_path / "v.npy")],
        input="hello\nworld\n", capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert embed.returncode == 0, embed.stderr
    for section in EXAMPLES:
        code = _example(section)
        proc = subprocess.run(
            [str(python), "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300
        )
        assert proc.returncode == 0, f"README {section} example:\n{proc.stderr[-3000:]}"
