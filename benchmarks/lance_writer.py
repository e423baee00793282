"""LanceDB write rate: embellama's buffered writer vs one LanceDB write of the same rows, same run.

``python -m benchmarks.lance_writer [--rows 100000] [--rounds 3] [--out benchmarks/results/lance-writer.md]``

Rows as ``embellama ingest`` makes them (id, text, a metadata column, a 384-d float32 vector), random vectors, no
model: this measures only the writing. ``LanceWriter`` receives 256-row embedded batches (``store_rows`` turns each
into the stores' layout) and writes every 10,000 rows; the peer writes the whole table in one ``create_table``.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from .snippets import interleave, publish, run_snippet

_CODE = r"""
import json, sys, tempfile, time
import numpy as np, pyarrow as pa
from embellama.ingest.lancedb import LanceWriter, store_rows
n, dims, how = int(sys.argv[1]), 384, sys.argv[2]
vectors = np.random.default_rng(0).random((n, dims), dtype=np.float32)
batch = pa.table({
    "id": [str(i) for i in range(n)], "text": ["a document about rivers and harbours"] * n, "topic": ["x"] * n,
    "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), dims),
})
db = tempfile.mkdtemp()
t0 = time.perf_counter()
if how == "writer":
    writer = LanceWriter(db, "docs")
    for start in range(0, n, 256):
        writer.add(store_rows(batch.slice(start, 256), id_column="id", text_column="text", vector_column="embedding"))
    writer.close()
else:
    import lancedb
    rows = store_rows(batch, id_column="id", text_column="text", vector_column="embedding")
    lancedb.connect(db).create_table("docs", data=rows)
print(json.dumps({"rows_s": n / (time.perf_counter() - t0)}))
"""


def main() -> int:
    """Run interleaved rounds; print (and write) the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    ns = parser.parse_args()
    peers = {"LanceWriter, 256-row batches": "writer", "one create_table of all rows": "once"}
    runs = interleave(list(peers), ns.rounds, lambda name: run_snippet(_CODE, str(ns.rows), peers[name]))
    rates = {name: [float(r["rows_s"]) for r in rows] for name, rows in runs.items()}
    once = statistics.median(rates["one create_table of all rows"])
    lines = [f"{ns.rows} rows of 384-d vectors.", ""]
    lines += ["| writer | rows/s (median, min-max) | vs one write |", "|---|---|---|"]
    for name, values in rates.items():
        median = statistics.median(values)
        lines.append(f"| {name} | {median:.0f} ({min(values):.0f}-{max(values):.0f}) | {median / once:.2f}x |")
    publish(lines, ns.rounds, ns.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
