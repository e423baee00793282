"""Writing an embedded Ray dataset to LanceDB: embellama's writer from the workers vs Lance's Ray sink, same run.

``python -m benchmarks.lance_sinks [--rows 200000] [--rounds 3] [--out benchmarks/results/lance-sinks.md]``

Rows as ``embed_dataset`` gives them (id, text, a metadata column, a 384-d float32 vector; random vectors, no
model: this measures only the writing), held in Ray's object store in 256-row blocks before the clock starts, on a
local Ray cluster with the machine's CPUs. Timed from the write call to every row committed and counted by LanceDB:

- ``append_rows`` from the workers (what ``embellama ingest --ray`` runs): an empty table created by the driver,
  then zero-CPU tasks each appending 8,192-row commits (``embellama.ingest.lancedb.append_rows``);
- ``lance_ray.write_lance`` (``embellama.ingest.lance_sink.write_table``): tasks write fragments, the driver
  commits once at the end.

Both tables are checked to hold every id once, and the version count each leaves is reported.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from .snippets import interleave, publish, run_snippet

_CODE = r"""
import functools, json, os, sys, tempfile, time
os.environ["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
os.environ["RAY_AUTH_MODE"] = "disabled"
import numpy as np, pyarrow as pa, ray, lancedb
from embellama.ingest.lancedb import LanceWriter, append_rows, store_schema
from embellama.ingest.lance_sink import write_table
n, dims, how = int(sys.argv[1]), 384, sys.argv[2]
ray.init(num_cpus=len(os.sched_getaffinity(0)), include_dashboard=False, log_to_driver=False)
ray.data.DataContext.get_current().enable_progress_bars = False
vectors = np.random.default_rng(0).random((n, dims), dtype=np.float32)
data = pa.table({
    "id": [f"doc-{i}" for i in range(n)], "text": ["a document about rivers and harbours"] * n, "topic": ["x"] * n,
    "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), dims),
})
ds = ray.data.from_arrow([data.slice(s, 256) for s in range(0, n, 256)]).materialize()
db = tempfile.mkdtemp()
t0 = time.perf_counter()
if how == "append_rows":
    schema = store_schema(data.drop_columns(["embedding"]).schema, id_column="id", text_column="text", dimensions=dims)
    writer = LanceWriter(db, "docs")
    writer.create_empty(schema)
    write = functools.partial(
        append_rows, db=db, table="docs", id_column="id", text_column="text", vector_column="embedding"
    )
    written = ds.map_batches(write, batch_format="pyarrow", batch_size=8192, num_cpus=0)
    count = sum(b["written"].sum() for b in written.iter_batches(batch_format="numpy", batch_size=None))
    table = lancedb.connect(db).open_table("docs")
    assert count == n
else:
    count = write_table(ds, db=db, table="docs")
    table = lancedb.connect(db).open_table("docs")
elapsed = time.perf_counter() - t0
ids = table.to_arrow().column("id").to_pylist()
assert len(ids) == n and len(set(ids)) == n, (len(ids), len(set(ids)))
versions = len(table.list_versions())
ray.shutdown()
print(json.dumps({"rows_s": n / elapsed, "versions": versions}))
"""


def main() -> int:
    """Run interleaved rounds; print (and write) the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    ns = parser.parse_args()
    peers = {
        "embellama append_rows from the workers (8,192-row commits)": "append_rows",
        "lance_ray.write_lance (one commit)": "lance_ray",
    }
    runs = interleave(list(peers), ns.rounds, lambda name: run_snippet(_CODE, str(ns.rows), peers[name]))
    rates = {name: [float(r["rows_s"]) for r in rows] for name, rows in runs.items()}
    base = statistics.median(rates[next(iter(peers))])
    lines = [f"{ns.rows} rows of 384-d vectors (pre-embedded, in the object store), local Ray cluster.", ""]
    lines += ["| writer | rows/s (median, min-max) | vs append_rows | table versions |", "|---|---|---|---|"]
    for name, values in rates.items():
        median = statistics.median(values)
        versions = runs[name][0]["versions"]
        lines.append(
            f"| {name} | {median:.0f} ({min(values):.0f}-{max(values):.0f}) | {median / base:.2f}x | {versions} |"
        )
    publish(lines, ns.rounds, ns.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
