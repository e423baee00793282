"""Helpers for the ingestion tests: corpora written to disk, the tiny BERT GGUF, and table checks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .families import build_family

WORDS = ["river", "mountain", "engine", "garden", "market", "signal", "harbor", "library", "forest", "castle"]


def tiny_bert() -> Path:
    """The random-weight BERT GGUF (64-d, built once per machine): embeds short texts at thousands per second."""
    return build_family("bert").gguf_path


def text(i: int) -> str:
    """A short distinct text for row ``i``."""
    return f"{WORDS[i % 10]} {WORDS[(i // 10) % 10]} number {i} of the {WORDS[(i // 100) % 10]} corpus"


def write_jsonl(path: Path, start: int, stop: int, *, bad_rows: dict[int, str] | None = None, **extra: Any) -> Path:
    """Rows ``start..stop-1`` as JSON lines (``id`` ``doc-<i>``, ``text``, ``n``); ``bad_rows`` replaces row
    ``i``'s line (0-based row index) with raw text."""
    bad_rows = bad_rows or {}
    with path.open("w") as f:
        for i in range(start, stop):
            if i in bad_rows:
                f.write(bad_rows[i] + "\n")
            else:
                f.write(json.dumps({"id": f"doc-{i}", "text": text(i), "n": i, **extra}) + "\n")
    return path


def write_corpus_dir(folder: Path, rows: int, files: int) -> Path:
    """A directory of ``files`` JSONL files holding rows ``0..rows-1`` between them."""
    folder.mkdir(parents=True, exist_ok=True)
    per = -(-rows // files)
    for k in range(files):
        write_jsonl(folder / f"part-{k:03d}.jsonl", k * per, min(rows, (k + 1) * per))
    return folder


def table_ids(db: Path, table: str) -> list[str]:
    """Every id in a LanceDB table (with repeats, if any)."""
    import lancedb

    return [str(v) for v in lancedb.connect(str(db)).open_table(table).to_arrow().column("id").to_pylist()]


def table_names(db: Path) -> list[str]:
    """The tables in a LanceDB directory."""
    import lancedb

    listed = lancedb.connect(str(db)).list_tables()
    return list(getattr(listed, "tables", listed))
