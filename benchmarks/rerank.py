"""Reranking pairs/s: embellama vs raw llama-cpp-python with RANK pooling over the same tokens, same run.

``python -m benchmarks.rerank [--rounds 3] [--out benchmarks/results/rerank.md]``

The cross-encoder is the offline test one (all-MiniLM-L6-v2's encoder + a one-label head,
``tests/fixtures/rerankers.py``).
Each round runs, each in a fresh process: embellama's ``rerank`` (default options: pairs packed into shared
decodes over one single-thread worker per core) and raw llama-cpp-python (one ``llama_encode`` per pair, all
cores, as its users score pairs today; with ``--packed`` too). 64 queries x 32 documents of ~20 words each.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from .snippets import interleave, publish, run_snippet

_SETUP = r"""
import json, os, sys, time
from benchmarks.workloads import make_texts
from tests.fixtures.rerankers import cross_encoder
path = str(cross_encoder().gguf_path)
queries = make_texts(64, 8, seed=3)
documents = make_texts(32, 20, seed=4)
"""

_EMBELLAMA = (
    _SETUP
    + r"""
from embellama import EmbeddingEngine, ModelConfig
with EmbeddingEngine(cache_size=0) as engine:
    engine.load_model(ModelConfig(model_path=path, model_name="rr"))
    engine.rerank("rr", queries[0], documents)
    t0 = time.perf_counter()
    for q in queries:
        engine.rerank("rr", q, documents)
    print(json.dumps({"pairs_s": len(queries) * len(documents) / (time.perf_counter() - t0)}))
"""
)

_RAW = (
    _SETUP
    + r"""
from tests.fixtures.rerankers import RawReranker
pack = sys.argv[1] == "packed"
with RawReranker(path, n_threads=len(os.sched_getaffinity(0))) as raw:
    raw.scores(queries[0], documents, pack=pack)
    t0 = time.perf_counter()
    for q in queries:
        raw.scores(q, documents, pack=pack)
    print(json.dumps({"pairs_s": len(queries) * len(documents) / (time.perf_counter() - t0)}))
"""
)

PEERS = {
    "embellama rerank": (_EMBELLAMA, "-"),
    "llama-cpp-python, one pair per encode": (_RAW, "single"),
    "llama-cpp-python, packed pairs": (_RAW, "packed"),
}


def main() -> int:
    """Run interleaved rounds; print (and write) the table with ratios to embellama."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    ns = parser.parse_args()
    runs = interleave(list(PEERS), ns.rounds, lambda name: run_snippet(*PEERS[name]))
    rates = {name: [float(r["pairs_s"]) for r in rows] for name, rows in runs.items()}
    ours = statistics.median(rates["embellama rerank"])
    lines = ["| peer | pairs/s (median) | embellama / peer |", "|---|---|---|"]
    for name, values in rates.items():
        median = statistics.median(values)
        lines.append(f"| {name} | {median:.0f} | {ours / median:.2f} |")
    publish(lines, ns.rounds, ns.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
