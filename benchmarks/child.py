"""One peer, one fresh process: load, warm up, time the workloads, report JSON.

``python -m benchmarks.child job.json result.json``. A fresh process per peer and round keeps memory figures
honest and stops llama.cpp contexts and torch thread pools from interfering with each other.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .peers import PeerSpec, build_peer, run_async_pair

__all__ = ["busy_process", "main", "run_job"]

_PREIMPORT = {
    "embellama": ["embellama"],
    "langchain-embellama": ["embellama", "embellama_integrations.langchain"],
    "raw-loop": ["llama_cpp"],
    "raw-batch": ["llama_cpp"],
    "langchain-llamacpp": ["llama_cpp", "langchain_community.embeddings"],
    "sentence-transformers": ["torch", "sentence_transformers"],
    "onnxruntime": ["onnxruntime", "tokenizers"],
    "onnxruntime-int8": ["onnxruntime", "tokenizers"],
}
_BUSY = "import sys, time\nend = time.monotonic() + float(sys.argv[1])\nwhile time.monotonic() < end:\n    pass\n"


def _rss() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


@contextlib.contextmanager
def busy_process(max_seconds: float = 120.0) -> Iterator[None]:
    """Run one CPU-bound busy loop in another process (it exits by itself after ``max_seconds``)."""
    proc = subprocess.Popen([sys.executable, "-c", _BUSY, str(max_seconds)])
    try:
        time.sleep(0.2)
        yield
    finally:
        proc.kill()
        proc.wait()


def _rate(fn: Any, texts: list[str]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn(texts)
    return len(texts) / (time.perf_counter() - t0), out


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Run the tasks of ``job`` for one peer and return the measurements."""
    spec = PeerSpec(**job["peer"])
    texts: dict[str, list[str]] = job["texts"]
    tasks: list[str] = job["tasks"]
    import warnings

    warnings.filterwarnings("ignore")
    for module in _PREIMPORT[spec.kind]:
        importlib.import_module(module)
    rss0 = _rss()
    t0 = time.perf_counter()
    peer = build_peer(spec, Path(job["gguf"]), Path(job["st_dir"]))
    result: dict[str, Any] = {"label": spec.label, "load_s": time.perf_counter() - t0}
    result["rss_load"] = _rss() - rss0
    result["threads"], result["notes"] = peer.threads, peer.notes
    peer.embed_many(texts["warmup"])
    peer.embed_one(texts["warmup"][0])
    samples: dict[str, Any] = {}
    if "quality" in tasks:
        samples["quality"] = np.asarray(peer.embed_many(texts["quality"]), dtype=np.float32)
    if "short" in tasks:
        result["short"] = _rate(peer.embed_many, texts["short"])[0]
    if "long" in tasks:
        result["long"] = _rate(peer.embed_many, texts["long"])[0]
    if "latency" in tasks:
        times = []
        for q in texts["queries"]:
            t = time.perf_counter()
            peer.embed_one(q)
            times.append((time.perf_counter() - t) * 1000)
        times.sort()
        result["p50_ms"] = statistics.median(times)
        result["p95_ms"] = times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]
    if "async" in tasks and peer.aembed_one is not None:
        seq, conc = run_async_pair(peer.aembed_one, texts["async"])
        result["async_seq_s"], result["async_conc_s"] = seq, conc
    if "contention" in tasks:
        quiet, busy = [], []
        pool = texts["contention"]
        n = len(pool) // 4
        for rep in range(2):  # quiet, busy, quiet, busy: each on texts of its own
            quiet.append(_rate(peer.embed_many, pool[2 * rep * n : (2 * rep + 1) * n])[0])
            with busy_process():
                busy.append(_rate(peer.embed_many, pool[(2 * rep + 1) * n : (2 * rep + 2) * n])[0])
        result["quiet"], result["busy"] = statistics.median(quiet), statistics.median(busy)
    result["rss_end"] = _rss() - rss0
    peer.close()
    if samples and job.get("sample_path"):
        np.savez(job["sample_path"], **samples)
    return result


def main(argv: list[str] | None = None) -> int:
    """Entry point: read the job file, write the result file."""
    args = sys.argv[1:] if argv is None else argv
    job = json.loads(Path(args[0]).read_text())
    result = run_job(job)
    Path(args[1]).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
