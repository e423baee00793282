"""``python -m benchmarks.profile_overhead``: where the time goes outside llama.cpp's decode.

Embeds 1,000 short texts (~20 tokens) through the core engine (``EmbeddingEngine(cache_size=0).embed_batch(...,
output="numpy")``) and through the LangChain adapter (``EmbellamaEmbeddings(...).embed_documents``), both on the
default model, and splits the wall time:

- native: time inside ``llama_cpp.llama_encode`` / ``llama_decode`` (what ``embellama.model.native`` calls; an encoder
  such as BERT goes through ``llama_encode``) and ``llama_cpp.llama_tokenize``. In this process only, those
  bindings are replaced by wrappers that record each call's thread, wall interval and thread CPU time;
- Python: each thread's CPU time (``pthread_getcpuclockid``) minus its native CPU time — planning, queues, futures,
  batch filling, pooling reads, numpy, result assembly;
- idle: worker capacity (workers x wall) neither in native calls nor running Python (waiting for work, the GIL,
  or a core taken by another process).

A second, separate pass of each path runs under cProfile with a per-thread CPU clock (so time a thread spends
preempted or waiting for the GIL is not charged to whatever function it was in) — on the caller thread, and on each
worker thread around its rounds (``embellama.runtime.backends.ThreadBackend.serve`` is wrapped here, in this process;
the
scheduler's queue loop around it is not profiled) — and lists the 15 functions with the most own CPU time, leaving
out the native wrappers and the clocks they read. ctypes calls are not seen by cProfile: the small native getters
(``llama_get_embeddings_seq``, ...) count in their Python caller. cProfile slows Python several-fold, so its table
ranks; the first table measures.

Writes ``benchmarks/results/overhead.md`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import cProfile
import os
import platform
import pstats
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["NativeTimer", "main", "measure", "profile_pass"]

N_TEXTS = 1000
WORDS = 16  # make_texts words per text (+-2): ~20 tokens with [CLS]/[SEP]
NATIVE = ("llama_encode", "llama_decode", "llama_tokenize")
DECODE = ("llama_encode", "llama_decode")
RESULTS = Path(__file__).parent / "results"
_WRAPPER_PREFIX = "timed_"
_CLOCKS = ("<built-in method time.thread_time_ns>", "<built-in method time.perf_counter_ns>")


@dataclass
class NativeTimer:
    """Replaces the ``llama_cpp`` bindings named in :data:`NATIVE` with recording wrappers (this process only).

    Each call records ``(thread id, start ns, end ns, thread CPU ns)``; ``list.append`` is atomic under the GIL.
    """

    records: dict[str, list[tuple[int, int, int, int]]] = field(default_factory=lambda: {n: [] for n in NATIVE})
    _originals: dict[str, Any] = field(default_factory=dict)

    def install(self) -> None:
        """Wrap the bindings (module attributes: ``embellama.model.native`` looks them up at each call)."""
        import llama_cpp

        for name in NATIVE:
            original = getattr(llama_cpp, name)
            self._originals[name] = original
            setattr(llama_cpp, name, self._wrap(name, original))

    def uninstall(self) -> None:
        """Put the original bindings back."""
        import llama_cpp

        for name, original in self._originals.items():
            setattr(llama_cpp, name, original)
        self._originals.clear()

    def reset(self) -> None:
        """Forget what was recorded."""
        for calls in self.records.values():
            calls.clear()

    def _wrap(self, name: str, original: Any) -> Callable[..., Any]:
        record = self.records[name].append
        ident, wall, cpu = threading.get_ident, time.perf_counter_ns, time.thread_time_ns

        def timed(*args: Any) -> Any:
            c0, t0 = cpu(), wall()
            try:
                return original(*args)
            finally:
                t1 = wall()
                record((ident(), t0, t1, cpu() - c0))

        timed.__name__ = timed.__qualname__ = _WRAPPER_PREFIX + name
        return timed


def _thread_cpu_ns() -> dict[int, tuple[str, int]]:
    """CPU time of every live Python thread: ident -> (name, ns)."""
    out = {}
    for t in threading.enumerate():
        if t.ident is None:
            continue
        try:
            out[t.ident] = (t.name, time.clock_gettime_ns(time.pthread_getcpuclockid(t.ident)))
        except (OSError, ValueError):  # the thread ended meanwhile
            continue
    return out


def _union_ns(intervals: list[tuple[int, int]]) -> int:
    """Length of the union of ``[start, end)`` intervals."""
    total, end = 0, None
    start = 0
    for s, e in sorted(intervals):
        if end is None or s > end:
            if end is not None:
                total += end - start
            start, end = s, e
        else:
            end = max(end, e)
    return total + (end - start if end is not None else 0)


def measure(
    call: Callable[[list[str]], Any], texts: list[str], timer: NativeTimer, worker_prefix: str = "embellama-"
) -> dict[str, float]:
    """Run ``call(texts)`` once and split its wall time (milliseconds; see the module docstring). The workers are
    the threads whose name starts with ``worker_prefix`` (the scheduler names them ``embellama-<model>-<i>``)."""
    timer.reset()
    before = _thread_cpu_ns()
    t0 = time.perf_counter_ns()
    call(texts)
    t1 = time.perf_counter_ns()
    after = _thread_cpu_ns()
    caller = threading.get_ident()
    workers = [i for i, (name, _) in after.items() if name.startswith(worker_prefix) and i in before]
    cpu = {i: after[i][1] - before[i][1] for i in [*workers, caller]}
    mine = set(workers)
    decode = [r for n in DECODE for r in timer.records[n] if r[0] in mine]
    tokenize = [r for r in timer.records["llama_tokenize"] if r[0] in mine]
    native_cpu_on_workers = sum(r[3] for r in decode + tokenize)
    worker_cpu = sum(cpu[i] for i in workers)
    wall = t1 - t0
    ms = 1e-6
    return {
        "wall": wall * ms,
        "texts_per_s": len(texts) / (wall * 1e-9),
        "n_workers": len(workers),
        "decode_calls": len(decode),
        "decode": sum(r[2] - r[1] for r in decode) * ms,
        "decode_cpu": sum(r[3] for r in decode) * ms,
        "tokenize_calls": len(tokenize),
        "tokenize": sum(r[2] - r[1] for r in tokenize) * ms,
        "worker_python": (worker_cpu - native_cpu_on_workers) * ms,
        "caller_cpu": cpu[caller] * ms,
        "worker_idle": (len(workers) * wall - worker_cpu) * ms,
        "wall_decoding": _union_ns([(r[1], r[2]) for r in decode]) * ms,
        "wall_no_native": (wall - _union_ns([(r[1], r[2]) for r in decode + tokenize])) * ms,
    }


# ----------------------------------------------------------------------------------------------- cProfile


def _new_profile() -> cProfile.Profile:
    return cProfile.Profile(time.thread_time_ns, 1e-9)  # thread CPU, not wall: see the module docstring


class _WorkerProfiles:
    """cProfile on the worker threads, around each round they serve (while ``on``): one profiler per thread."""

    def __init__(self) -> None:
        self.on = False
        self.profiles: dict[int, cProfile.Profile] = {}
        self._original: Any = None

    def install(self) -> None:
        from embellama.runtime.backends import ThreadBackend

        original = self._original = ThreadBackend.serve

        def serve(backend: Any, jobs: Any, *, lone: bool = False) -> None:
            if not self.on:
                original(backend, jobs, lone=lone)
                return
            prof = self.profiles.setdefault(threading.get_ident(), _new_profile())
            prof.enable()
            try:
                original(backend, jobs, lone=lone)
            finally:
                prof.disable()

        ThreadBackend.serve = serve  # type: ignore[method-assign,assignment]

    def uninstall(self) -> None:
        from embellama.runtime.backends import ThreadBackend

        if self._original is not None:
            ThreadBackend.serve = self._original  # type: ignore[method-assign]


@contextmanager
def _profiling(workers: _WorkerProfiles) -> Iterator[cProfile.Profile]:
    workers.profiles.clear()
    workers.on = True
    caller = _new_profile()
    caller.enable()
    try:
        yield caller
    finally:
        caller.disable()
        workers.on = False


def _label(key: tuple[str, int, str]) -> str:
    path, line, func = key
    if path == "~":
        return func
    parts = Path(path).parts
    for root in ("embellama", "embellama_integrations", "benchmarks"):
        if root in parts:
            return f"{'/'.join(parts[parts.index(root) :])}:{line} {func}"
    return f"{Path(path).name}:{line} {func}"


def _excluded(key: tuple[str, int, str]) -> bool:
    """The native wrappers (this module) and the clocks they read: what the first table counts as native."""
    return key[0] == __file__ or key[2] in _CLOCKS


def profile_pass(
    call: Callable[[list[str]], Any], texts: list[str], workers: _WorkerProfiles, top: int = 15
) -> tuple[list[tuple[str, str, int, float]], dict[str, float]]:
    """Run ``call(texts)`` under cProfile: the ``top`` functions by own time outside native calls and blocking
    waits, as ``(thread, function, calls, own CPU ms)``, and the caller's cumulative ms in a few engine steps."""
    with _profiling(workers) as caller:
        call(texts)
    rows: list[tuple[str, str, int, float]] = []
    groups = [("caller", caller), *(("worker", p) for p in workers.profiles.values())]
    merged: dict[tuple[str, tuple[str, int, str]], list[float]] = {}
    for where, prof in groups:
        stats: dict[Any, Any] = pstats.Stats(prof).stats  # type: ignore[attr-defined]
        for key, (_, ncalls, tottime, _, _) in stats.items():
            acc = merged.setdefault((where, key), [0, 0.0])
            acc[0] += ncalls
            acc[1] += tottime
    for (where, key), (ncalls, tottime) in merged.items():
        if not _excluded(key):
            rows.append((where, _label(key), int(ncalls), tottime * 1e3))
    rows.sort(key=lambda r: -r[3])
    cumulative: dict[str, float] = {}
    caller_stats: dict[Any, Any] = pstats.Stats(caller).stats  # type: ignore[attr-defined]
    for key, (_, _, _, cumtime, _) in caller_stats.items():
        if key[2] in ("plan_request", "_submit", "wait_jobs", "assemble", "_vectors", "tolist", "drive"):
            cumulative[key[2]] = cumulative.get(key[2], 0.0) + cumtime * 1e3
    return rows[:top], cumulative


# ----------------------------------------------------------------------------------------------- report

_ROWS: list[tuple[str, Callable[[dict[str, float]], float], str]] = [
    ("Wall time", lambda m: m["wall"], "ms"),
    ("llama_encode/decode, summed over workers", lambda m: m["decode"], "ms"),
    ("llama_encode/decode thread CPU, summed (below wall: preempted)", lambda m: m["decode_cpu"], "ms"),
    ("llama_tokenize, summed", lambda m: m["tokenize"], "ms"),
    ("Python CPU on the workers (outside native calls)", lambda m: m["worker_python"], "ms"),
    ("CPU on the caller thread (plan, submit, wait, assemble)", lambda m: m["caller_cpu"], "ms"),
    ("Worker capacity idle (workers x wall - worker CPU)", lambda m: m["worker_idle"], "ms"),
    ("Wall with a decode running on some worker", lambda m: m["wall_decoding"], "ms"),
    ("Wall with no native call running anywhere", lambda m: m["wall_no_native"], "ms"),
    (
        "Native share of worker capacity",
        lambda m: 100 * (m["decode"] + m["tokenize"]) / (m["n_workers"] * m["wall"]),
        "%",
    ),
]


def _cell(value: float, unit: str, n: int) -> str:
    return f"{value:.0f}%" if unit == "%" else f"{value:.0f} ms = {1000 * value / n:.0f} µs/text"


def render(results: dict[str, dict[str, Any]], n: int, header: str) -> str:
    """The Markdown report: the split per path, then each path's cProfile ranking."""
    names = list(results)
    lines = [header, "", "| | " + " | ".join(names) + " |", "|" + "---|" * (len(names) + 1)]
    for label, get, unit in _ROWS:
        lines.append(f"| {label} | " + " | ".join(_cell(get(results[nm]["split"]), unit, n) for nm in names) + " |")
    calls = " | ".join(
        f"{results[nm]['split']['decode_calls']:.0f} decodes, {results[nm]['split']['n_workers']:.0f} workers"
        for nm in names
    )
    lines.append(f"| Decode calls, workers | {calls} |")
    walls = " | ".join(", ".join(f"{w:.0f}" for w in results[nm]["walls"]) for nm in names)
    lines.append(f"| Wall of every timed pass, ms | {walls} |")
    for nm in names:
        rows, cumulative = results[nm]["profile"], results[nm]["cumulative"]
        lines += [
            "",
            f"### cProfile, {nm}: top {len(rows)} by own CPU time outside native calls",
            "",
            "Caller cumulative (profiled, ms): "
            + ", ".join(f"`{k}` {v:.0f}" for k, v in sorted(cumulative.items(), key=lambda kv: -kv[1])),
            "",
            "| Thread | Function | Calls | Own CPU ms (profiled) | µs/text |",
            "|---|---|---|---|---|",
        ]
        for where, func, ncalls, ms in rows:
            lines.append(f"| {where} | `{func}` | {ncalls} | {ms:.1f} | {1000 * ms / n:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m benchmarks.profile_overhead [--n 1000] [--repeat 2] [--out DIR]``."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile_overhead", description=__doc__)
    parser.add_argument("--n", type=int, default=N_TEXTS, help="texts per pass (default 1000)")
    parser.add_argument("--repeat", type=int, default=2, help="timed passes per path, interleaved (default 2)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="output folder (default benchmarks/results)")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import embellama
    from embellama_integrations.langchain import EmbellamaEmbeddings

    from .workloads import make_texts

    n = args.n
    model = embellama.default_model_path()
    timer, profiles = NativeTimer(), _WorkerProfiles()
    timer.install()
    profiles.install()
    load_before = os.getloadavg()[0]
    engine = embellama.EmbeddingEngine(cache_size=0)
    try:
        engine.load_model(model_path=str(model), model_name="profile")
        lc = EmbellamaEmbeddings(model_path=str(model), preload=True)
        paths: dict[str, tuple[Callable[[list[str]], Any], str]] = {
            'core `embed_batch(output="numpy")`': (
                lambda texts: engine.embed_batch("profile", texts, output="numpy"),
                "embellama-profile-",
            ),
            "LangChain `embed_documents`": (lc.embed_documents, f"embellama-{lc.client.info.name}-"),
        }
        seeds = iter(range(1000, 2000))
        passes: dict[str, list[dict[str, float]]] = {name: [] for name in paths}
        for call, _ in paths.values():  # warm-up
            call(make_texts(64, WORDS, next(seeds)))
        for _ in range(args.repeat):  # interleaved: A B A B, every pass on texts of its own (no cache hit)
            for name, (call, prefix) in paths.items():
                passes[name].append(measure(call, make_texts(n, WORDS, next(seeds)), timer, prefix))
        results: dict[str, dict[str, Any]] = {}
        for name, (call, _) in paths.items():
            rows, cumulative = profile_pass(call, make_texts(n, WORDS, next(seeds)), profiles)
            best = min(passes[name], key=lambda m: m["wall"])
            results[name] = {"split": best, "walls": [m["wall"] for m in passes[name]], "profile": rows}
            results[name]["cumulative"] = cumulative
    finally:
        engine.close()
        profiles.uninstall()
        timer.uninstall()
    header = (
        f"# Where the time goes outside llama_decode\n\n"
        f"`python -m benchmarks.profile_overhead`: {n} short texts (`make_texts(n, {WORDS})`, ~20 tokens) on the "
        f"default model ({model.name}), {os.cpu_count()} cores ({platform.processor() or platform.machine()}), "
        f"Python {platform.python_version()}, load average {load_before:.1f} before / {os.getloadavg()[0]:.1f} "
        f"after (a shared machine: wall times are noisy, CPU times much less). {args.repeat} timed passes per "
        f"path, interleaved, after a warm-up; the table shows each path's fastest, then a separate pass under "
        f"cProfile. Per-text figures divide by {n}. The core engine has no cache (`cache_size=0`); the adapter "
        f"uses the process-wide shared engine (its default cache, 10,000 entries, only misses here)."
    )
    report = render(results, n, header)
    print(report)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "overhead.md").write_text(report)
    print(f"wrote {args.out / 'overhead.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
