"""Ray Data scale-out on one box: texts/s with 1 and 2 actors vs the local engine, same run.

``python -m benchmarks.ray_scaleout [--rounds 3] [--texts 4000] [--out benchmarks/results/ray.md]``

Each round runs, each in a fresh process: the local engine (defaults: one single-thread model instance per core,
``embed_batch`` over the whole corpus) and ``embed_dataset`` on a local Ray cluster with as many CPUs as the box
has, with 1 and 2 one-CPU actors. Timed: from building the dataset to having every vector back in the driver,
actor start and model load included (an ingestion job pays them too); ``ray.init`` is not timed. Short texts
(~20 tokens), the default model.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from .snippets import interleave, publish, run_snippet

_SETUP = r"""
import json, os, sys, tempfile, time
from benchmarks.workloads import make_texts
from embellama import default_model_path
path = str(default_model_path())
texts = make_texts(int(sys.argv[1]), 14, seed=11)
"""

_LOCAL = (
    _SETUP
    + r"""
from embellama import EmbeddingEngine, ModelConfig
t0 = time.perf_counter()
with EmbeddingEngine(cache_size=0) as engine:
    engine.load_model(ModelConfig(model_path=path, model_name="m"))
    t1 = time.perf_counter()
    vectors = engine.embed_batch("m", texts, output="numpy")
    t2 = time.perf_counter()
print(json.dumps({"texts_s": len(texts) / (t2 - t0), "steady_s": len(texts) / (t2 - t1)}))
"""
)

_RAY = (
    _SETUP
    + r"""
os.environ["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
os.environ["RAY_AUTH_MODE"] = "disabled"
import ray
from embellama.ingest.ray import embed_dataset
ray.init(num_cpus=len(os.sched_getaffinity(0)), include_dashboard=False, log_to_driver=False)
ray.data.DataContext.get_current().enable_progress_bars = False
def run(rows):
    t0 = time.perf_counter()
    ds = embed_dataset(ray.data.from_items(rows), model_path=path, num_actors=int(sys.argv[2]))
    n = sum(batch.num_rows for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None))
    assert n == len(rows)
    return time.perf_counter() - t0
rows = [{"id": i, "text": t} for i, t in enumerate(texts)]
fixed = run(rows[:8])  # actor start, model load, scheduling: what every job pays once
elapsed = run(rows)
ray.shutdown()
n = len(rows)
print(json.dumps({"texts_s": n / elapsed, "steady_s": n / max(1e-9, elapsed - fixed)}))
"""
)


def main() -> int:
    """Run interleaved rounds; print (and write) the table with ratios to the local engine."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--texts", type=int, default=4000)
    parser.add_argument("--out", type=Path, default=None)
    ns = parser.parse_args()
    peers = {
        "local engine (defaults)": (_LOCAL, str(ns.texts)),
        "Ray Data, 1 actor x 1 CPU": (_RAY, str(ns.texts), "1"),
        "Ray Data, 2 actors x 1 CPU": (_RAY, str(ns.texts), "2"),
    }
    runs = interleave(list(peers), ns.rounds, lambda name: run_snippet(*peers[name]))
    lines = [
        f"{ns.texts} short texts (~20 tokens), default model. End to end: from building the dataset to every "
        "vector in the driver (actor start and model load included). Steady: the same minus the time a job of 8 "
        "texts takes (the fixed start-up cost; local engine: minus loading).",
        "",
        "| peer | end-to-end texts/s (median, min-max) | vs local | steady texts/s | vs local |",
        "|---|---|---|---|---|",
    ]
    medians = {
        metric: {name: statistics.median(float(r[metric]) for r in rows) for name, rows in runs.items()}
        for metric in ("texts_s", "steady_s")
    }
    local = "local engine (defaults)"
    for name, rows in runs.items():
        values = [float(r["texts_s"]) for r in rows]
        e2e, steady = medians["texts_s"][name], medians["steady_s"][name]
        lines.append(
            f"| {name} | {e2e:.0f} ({min(values):.0f}-{max(values):.0f}) | {e2e / medians['texts_s'][local]:.2f}x "
            f"| {steady:.0f} | {steady / medians['steady_s'][local]:.2f}x |"
        )
    publish(lines, ns.rounds, ns.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
