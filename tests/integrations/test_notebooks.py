"""The notebooks run top to bottom against the default model, so they never rot; they are committed clean."""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parents[2] / "notebooks").glob("*.ipynb"))


def test_the_expected_notebooks_exist() -> None:
    names = {p.stem for p in NOTEBOOKS}
    assert {
        "01_quickstart",
        "02_langchain_retrieval",
        "03_llama_index_ingestion",
        "04_rerank",
        "05_scale_out_ray",
    } <= names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_committed_without_outputs(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    stale = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and (c.outputs or c.execution_count)]
    assert not stale, f"{path.name}: cells {stale} have outputs; strip them before committing"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes(path: Path, model_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # this venv's kernel spec first, whatever a user-level "python3" spec says (jupyter_client then runs the
    # spec's bare "python" as sys.executable: the venv's interpreter)
    monkeypatch.setenv("JUPYTER_PATH", str(Path(sys.prefix) / "share" / "jupyter"))
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend (Agg-based) renders PNGs
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, kernel_name="python3", timeout=300, resources={"metadata": {"path": str(path.parent)}})
    client.execute()  # raises CellExecutionError (with the cell's traceback) if any cell fails
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    if path.stem != "02_langchain_retrieval":  # the others draw a plot
        assert images, f"{path.name} drew no figure"
    if "llama_index" in path.stem:  # and this one shows LlamaIndex's progress bar over the chunks
        # with ipywidgets (the progress extra) tqdm.auto draws a widget (its text/plain is the initial state)
        widgets = [o for o in outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
        plain = " ".join(str(o.get("data", {}).get("text/plain", "")) for o in widgets)
        assert "Generating embeddings: 100%" in text or "Generating embeddings" in plain
        assert "IProgress not found" not in text  # the progress extra brings what notebooks need
