"""Ingestion at scale: driver memory vs corpus size, local vs Ray rates with a real Ray reader, idempotent writes'
cost. Each run is a fresh ``embellama ingest`` process (or a fresh child), the tiny random-weight BERT GGUF (64-d,
the test fixture) so the corpus sizes stay quick; same run, same machine.

``python -m benchmarks.ingest_scale [--rss-rows 30000,300000] [--rate-rows 20000] [--rounds 2]
[--out benchmarks/results/ingest.md]``

- Driver peak RSS: ``embellama ingest corpus.jsonl`` in this process's child (max RSS of that child only), at each
  ``--rss-rows`` size, in this process and with ``--ray local``.
- Rows/s: the same corpus (a directory of 4 JSONL files) ingested in one process, and on a local Ray cluster
  (``ray.data.read_json`` as the source) with 1 and 2 actors.
- Idempotent vs blind writes: the local ingestion end to end with every write a ``merge_insert`` on the id (what
  ships) and with it replaced by a blind ``table.add`` (in the benchmark's child only); and the writes alone (no
  model): 256-row batches of random 384-d rows buffered to 8,192-row commits into a growing table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .snippets import REPO, interleave, publish, run_snippet

_DRIVER = r"""
import json, os, resource, subprocess, sys
cmd = json.loads(sys.argv[1])
proc = subprocess.run(cmd, capture_output=True, text=True)
if proc.returncode != 0:
    raise SystemExit(proc.stderr[-3000:])
print(json.dumps({"maxrss_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, "err": proc.stderr[-300:]}))
"""

_E2E = r"""
import json, sys, time
import embellama.ingest.lancedb as lancedb_mod
corpus, db, how = sys.argv[1], sys.argv[2], sys.argv[3]
if how == "blind":
    def blind(table, rows):
        table.add(rows)
        return rows.num_rows
    lancedb_mod.insert_new_rows = blind
from embellama.ingest.pipeline import ingest
from tests.fixtures.ingest_corpora import tiny_bert
t0 = time.perf_counter()
report = ingest(corpus, db, model_path=tiny_bert(), pooling="mean", compact=False)
print(json.dumps({"rows_s": report.table_rows / (time.perf_counter() - t0), "rows": report.table_rows}))
"""

_WRITES = r"""
import json, sys, tempfile, time
import numpy as np, pyarrow as pa
from embellama.ingest.lancedb import LanceWriter, store_rows
import embellama.ingest.lancedb as lancedb_mod
n, how = int(sys.argv[1]), sys.argv[2]
if how == "blind":
    def blind(table, rows):
        table.add(rows)
        return rows.num_rows
    lancedb_mod.insert_new_rows = blind
vectors = np.random.default_rng(0).random((n, 384), dtype=np.float32)
batch = pa.table({
    "id": [f"doc-{i}" for i in range(n)], "text": ["a document about rivers and harbours"] * n, "topic": ["x"] * n,
    "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), 384),
})
writer = LanceWriter(tempfile.mkdtemp(), "docs", flush_rows=8192, compact=False)
t0 = time.perf_counter()
for start in range(0, n, 256):
    writer.add(store_rows(batch.slice(start, 256), id_column="id", text_column="text", vector_column="embedding"))
writer.close()
print(json.dumps({"rows_s": n / (time.perf_counter() - t0)}))
"""


def _corpus(folder: Path, rows: int, files: int = 1) -> Path:
    sys.path.insert(0, str(REPO))
    from tests.fixtures.ingest_corpora import tiny_bert, write_corpus_dir, write_jsonl

    tiny_bert()  # built once, outside any timing
    if files == 1:
        folder.mkdir(parents=True, exist_ok=True)
        return write_jsonl(folder / "corpus.jsonl", 0, rows)
    return write_corpus_dir(folder, rows, files)


def _env() -> dict[str, str]:
    paths = [str(REPO / "core"), str(REPO)]
    return dict(os.environ, PYTHONPATH=os.pathsep.join(paths), RAY_AUTH_MODE="disabled")


def _ingest_cmd(corpus: Path, db: Path, *extra: str) -> list[str]:
    sys.path.insert(0, str(REPO))
    from tests.fixtures.ingest_corpora import tiny_bert

    return [sys.executable, "-m", "embellama.cli", "ingest", str(corpus), "--db", str(db), "-m", str(tiny_bert()),
            "--pooling", "mean", "-q", *extra]  # fmt: skip


def driver_rss(rows: int, ray: bool, work: Path) -> dict[str, float]:
    """Peak RSS (MiB) of one ``embellama ingest`` process over a ``rows``-row corpus, and its rows/s."""
    corpus = _corpus(work / f"rss-{rows}", rows)
    db = work / f"db-rss-{rows}-{ray}"
    extra = ["--ray", "local", "--num-actors", "1"] if ray else []
    cmd = _ingest_cmd(corpus, db, *extra)
    env = _env()
    if ray:
        env["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", _DRIVER, json.dumps(cmd)], capture_output=True, text=True, env=env, timeout=3600
    )
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"rss_mib": out["maxrss_kib"] / 1024, "rows_s": rows / (time.perf_counter() - t0)}


def rates(rows: int, work: Path) -> dict[str, float]:
    """Rows/s end to end of one CLI process: in this process, and on Ray (read_json source) with 1 and 2 actors."""
    corpus = _corpus(work / f"rate-{rows}", rows, files=4)
    out = {}
    for name, extra in {
        "local (this process, 2 instances x 1 thread)": [],
        "Ray, 1 actor x 1 CPU (read_json source)": ["--ray", "local", "--num-actors", "1"],
        "Ray, 2 actors x 1 CPU (read_json source)": ["--ray", "local", "--num-actors", "2"],
    }.items():
        env = _env()
        env["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
        db = Path(tempfile.mkdtemp(dir=work))
        t0 = time.perf_counter()
        proc = subprocess.run(_ingest_cmd(corpus, db, *extra), capture_output=True, text=True, env=env, timeout=3600)
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr[-2000:])
        out[name] = rows / (time.perf_counter() - t0)
        print(name, round(out[name]), file=sys.stderr, flush=True)
    return out


def main() -> int:
    """Run the measurements; print (and write) the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rss-rows", default="30000,300000")
    parser.add_argument("--rss-ray", action="store_true", help="also measure the driver with --ray local")
    parser.add_argument("--rate-rows", type=int, default=20_000)
    parser.add_argument("--e2e-rows", type=int, default=20_000)
    parser.add_argument("--write-rows", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    ns = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ingest-bench-"))
    lines = ["Tiny random-weight BERT GGUF (64-d, 2 layers), short texts (~12 tokens), JSON lines.", ""]

    lines += ["### Driver peak RSS", "", "| corpus rows | driver | peak RSS (MiB) | rows/s |", "|---|---|---|---|"]
    for rows in [int(r) for r in ns.rss_rows.split(",")]:
        for ray in (False, True) if ns.rss_ray else (False,):
            got = driver_rss(rows, ray, work)
            label = "`--ray local`, 1 actor (the CLI process only)" if ray else "this process (embeds too)"
            lines.append(f"| {rows:,} | {label} | {got['rss_mib']:.0f} | {got['rows_s']:.0f} |")
            print(lines[-1], file=sys.stderr, flush=True)

    got_rates = rates(ns.rate_rows, work)
    local = next(iter(got_rates.values()))
    lines += ["", f"### Rows/s end to end ({ns.rate_rows:,} rows, 4 JSONL files, one `embellama ingest` each)", ""]
    lines += ["| peer | rows/s | vs local |", "|---|---|---|"]
    lines += [f"| {name} | {rate:.0f} | {rate / local:.2f}x |" for name, rate in got_rates.items()]

    corpus = _corpus(work / "e2e", ns.e2e_rows)
    peers = {"idempotent (merge_insert on id)": "idempotent", "blind append (table.add)": "blind"}
    runs = interleave(
        list(peers),
        ns.rounds,
        lambda name: run_snippet(_E2E, str(corpus), tempfile.mkdtemp(dir=work), peers[name], cwd=REPO),
    )
    e2e = {name: statistics.median(float(r["rows_s"]) for r in rows) for name, rows in runs.items()}
    wruns = interleave(list(peers), ns.rounds, lambda name: run_snippet(_WRITES, str(ns.write_rows), peers[name]))
    writes = {name: statistics.median(float(r["rows_s"]) for r in rows) for name, rows in wruns.items()}
    blind_e2e, blind_w = e2e["blind append (table.add)"], writes["blind append (table.add)"]
    lines += ["", f"### Idempotent vs blind writes (median of {ns.rounds} interleaved rounds)", ""]
    lines += [
        f"| writes | end to end, {ns.e2e_rows:,} rows (rows/s) | vs blind | writes alone, {ns.write_rows:,} "
        "384-d rows (rows/s) | vs blind |",
        "|---|---|---|---|---|",
    ]
    for name in peers:
        lines.append(
            f"| {name} | {e2e[name]:.0f} | {e2e[name] / blind_e2e:.2f}x | {writes[name]:.0f} | "
            f"{writes[name] / blind_w:.2f}x |"
        )
    publish(lines, ns.rounds, ns.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
