"""Same-run comparison of two source trees of embellama (e.g. before/after a refactor) on the core engine.

``python -m benchmarks.compare_trees OLD_TREE NEW_TREE [--rounds 3] [--out benchmarks/results/compare.md]``

Each round runs each tree once, in a fresh process, in alternating order (interleaved rounds, as ``make bench``
does for peers), with the default model and default options: short texts (~20 tokens) per second, long texts
(~250 tokens) per second, and the median latency of a lone query. Reports medians and NEW/OLD ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

_CHILD = r"""
import json, statistics, sys, time
from embellama import EmbeddingEngine, ModelConfig, default_model_path
from benchmarks.workloads import make_texts
short = make_texts(512, 14, seed=1)
long = make_texts(64, 190, seed=2)
with EmbeddingEngine(cache_size=0) as engine:
    engine.load_model(ModelConfig(model_path=default_model_path(build=False), model_name="m", truncate=True))
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


def run_tree(tree: Path, bench_root: Path) -> dict[str, float]:
    """Measure one tree in a fresh process (its ``core`` and root first on the path)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tree / "core"), str(tree), str(bench_root)]))
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True, timeout=600, cwd=tree
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{tree}: {proc.stderr[-2000:]}")
    result: dict[str, float] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def main() -> int:
    """Run the comparison and print (and write) a markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    ns = parser.parse_args()
    bench_root = Path(__file__).resolve().parent.parent
    runs: dict[str, list[dict[str, float]]] = {"old": [], "new": []}
    for r in range(ns.rounds):
        order = [("old", ns.old), ("new", ns.new)] if r % 2 == 0 else [("new", ns.new), ("old", ns.old)]
        for label, tree in order:
            runs[label].append(run_tree(tree.resolve(), bench_root))
            print(label, runs[label][-1], file=sys.stderr, flush=True)
    lines = ["| metric | old (median) | new (median) | new / old |", "|---|---|---|---|"]
    for metric in ("short", "long", "p50_ms"):
        old = statistics.median(x[metric] for x in runs["old"])
        new = statistics.median(x[metric] for x in runs["new"])
        lines.append(f"| {metric} | {old:.1f} | {new:.1f} | {new / old:.2f} |")
    table = "\n".join(lines)
    print(table)
    if ns.out is not None:
        ns.out.write_text(f"Rounds: {ns.rounds}, interleaved, fresh process per tree and round.\n\n{table}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
