"""A second engine vs Ray: the same texts embedded by Daft's class UDF, by Ray Data and by the local engine.

``python -m benchmarks.engines [--rounds 3] [--texts 4000] [--out benchmarks/results/engines.md]``

Each round runs every peer in a fresh process, in alternating order: the local engine (defaults), Ray Data
(``embed_dataset``, a local cluster with the machine's CPUs, as many one-CPU actors as CPUs) and Daft's native
runner (``embellama.ingest.daft.embedder``, as many one-CPU UDF processes as CPUs; and one UDF process with
every CPU). Timed: from building the dataset/dataframe to every vector back in the driver, worker start and model
load included (``ray.init`` is not timed). Short texts (~20 tokens), the default model. Every peer's vectors are
compared with the local engine's (min cosine over all texts).
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from .snippets import interleave, publish, run_snippet

_SETUP = r"""
import json, os, sys, tempfile, time
import numpy as np
from benchmarks.workloads import make_texts
from embellama import default_model_path, EmbeddingEngine, ModelConfig
path = str(default_model_path())
texts = make_texts(int(sys.argv[1]), 14, seed=11)
cpus = len(os.sched_getaffinity(0))
def reference():
    with EmbeddingEngine(cache_size=0) as engine:
        engine.load_model(ModelConfig(model_path=path, model_name="m"))
        return engine.embed_batch("m", texts, output="numpy")
def report(elapsed, vectors, local):
    cos = float(np.min(np.sum(np.asarray(vectors, dtype=np.float32) * local, axis=1)))
    print(json.dumps({"texts_s": len(texts) / elapsed, "min_cosine": cos}))
"""

_LOCAL = (
    _SETUP
    + r"""
t0 = time.perf_counter()
local = reference()
report(time.perf_counter() - t0, local, local)
"""
)

_RAY = (
    _SETUP
    + r"""
os.environ["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
os.environ["RAY_AUTH_MODE"] = "disabled"
import ray
from embellama.ingest.ray import embed_dataset
for attempt in range(3):  # a loaded machine can time out a node's start
    try:
        ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
        break
    except Exception:
        if attempt == 2:
            raise
ray.data.DataContext.get_current().enable_progress_bars = False
rows = [{"id": i, "text": t} for i, t in enumerate(texts)]
t0 = time.perf_counter()
out = embed_dataset(ray.data.from_items(rows), model_path=path, num_actors=cpus).take_all()
elapsed = time.perf_counter() - t0
ray.shutdown()
got = np.stack([np.asarray(r["embedding"]) for r in sorted(out, key=lambda r: r["id"])])
report(elapsed, got, reference())
"""
)

_DAFT = (
    _SETUP
    + r"""
import daft
from embellama.ingest.daft import embedder
processes = int(sys.argv[2]) if sys.argv[2] != "all" else cpus
t0 = time.perf_counter()
embed = embedder(path, concurrency=processes)
df = daft.from_pydict({"id": list(range(len(texts))), "text": texts})
out = df.with_column("embedding", embed(df["text"])).to_arrow()
elapsed = time.perf_counter() - t0
out = out.sort_by("id")
got = np.stack(out.column("embedding").to_numpy(zero_copy_only=False))
report(elapsed, got, reference())
"""
)


def main() -> int:
    """Run interleaved rounds; print (and write) the table with ratios to Ray Data."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--texts", type=int, default=4000)
    parser.add_argument("--out", type=Path, default=None)
    ns = parser.parse_args()
    texts = str(ns.texts)
    ray_name = "Ray Data, one 1-CPU actor per CPU"
    peers = {
        "local engine (defaults)": (_LOCAL, texts),
        ray_name: (_RAY, texts),
        "Daft native runner, one 1-CPU UDF process per CPU": (_DAFT, texts, "all"),
        "Daft native runner, 1 UDF process with every CPU": (_DAFT, texts, "1"),
    }
    runs = interleave(list(peers), ns.rounds, lambda name: run_snippet(*peers[name]))
    base = statistics.median(float(r["texts_s"]) for r in runs[ray_name])
    lines = [
        f"{ns.texts} short texts (~20 tokens), default model. End to end: from building the dataset or dataframe to "
        "every vector in the driver (worker start and model load included).",
        "",
        "| peer | texts/s (median, min-max) | vs Ray Data | min cosine to the local engine |",
        "|---|---|---|---|",
    ]
    for name, rows in runs.items():
        values = [float(r["texts_s"]) for r in rows]
        median = statistics.median(values)
        cosine = min(float(r["min_cosine"]) for r in rows)
        spread = f"{median:.0f} ({min(values):.0f}-{max(values):.0f})"
        lines.append(f"| {name} | {spread} | {median / base:.2f}x | {cosine:.6f} |")
    publish(lines, ns.rounds, ns.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
