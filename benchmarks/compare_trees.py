"""Same-run comparison of two source trees of embellama (e.g. before/after a refactor) on the core engine.

``python -m benchmarks.compare_trees OLD_TREE NEW_TREE [--rounds 3] [--out benchmarks/results/compare.md]``

Each round runs each tree once, in a fresh process, in alternating order (interleaved rounds, as ``make bench``
does for peers), with the default model and default options: short texts (~20 tokens) per second, long texts
(~250 tokens) per second, and the median latency of a lone query. Reports medians and speed ratios
(NEW/OLD throughput, OLD/NEW latency: above 1 means the new tree is faster).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

from .snippets import interleave, publish, run_snippet

_CHILD = r"""
import json, statistics, sys, time
import dataclasses
from embellama import EmbeddingEngine, ModelConfig, default_model_path
from benchmarks.workloads import make_texts
fields = {f.name for f in dataclasses.fields(ModelConfig)}  # trees before issue 19 spell the option `truncate`
cut = {"truncate": True} if "truncate" in fields else {"long_text_mode": "truncate"}
short = make_texts(512, 14, seed=1)
long = make_texts(64, 190, seed=2)
with EmbeddingEngine(cache_size=0) as engine:
    engine.load_model(ModelConfig(model_path=default_model_path(build=False), model_name="m", **cut))
    engine.embed_batch("m", short[:64])
    out = {}
    t0 = time.perf_counter(); engine.embed_batch("m", short); out["short"] = len(short) / (time.perf_counter() - t0)
    t0 = time.perf_counter(); engine.embed_batch("m", long); out["long"] = len(long) / (time.perf_counter() - t0)
    times = []
    for i in range(200):
        t0 = time.perf_counter(); engine.embed("m", f"a lone query number {i}"); times.append(time.perf_counter() - t0)
    out["p50_ms"] = statistics.median(times) * 1000
print(json.dumps(out))
"""


def run_tree(tree: Path) -> dict[str, Any]:
    """Measure one tree in a fresh process (its ``core`` and root first on the path)."""
    return run_snippet(_CHILD, pythonpath=[tree / "core", tree], cwd=tree)


def main() -> int:
    """Run the comparison and print (and write) a markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    ns = parser.parse_args()
    trees = {"old": ns.old.resolve(), "new": ns.new.resolve()}
    runs = interleave(list(trees), ns.rounds, lambda label: run_tree(trees[label]))
    lines = ["| metric | old (median) | new (median) | speed new / old |", "|---|---|---|---|"]
    for metric in ("short", "long", "p50_ms"):
        old = statistics.median(x[metric] for x in runs["old"])
        new = statistics.median(x[metric] for x in runs["new"])
        speed = old / new if metric.endswith("_ms") else new / old  # a latency: lower is faster
        lines.append(f"| {metric} | {old:.2f} | {new:.2f} | {speed:.3f} |")
    publish(lines, ns.rounds, ns.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
