"""Turn raw benchmark results into ``latest.json``, a Markdown table (``latest.md``) and a chart (``latest.png``)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["min_cosine", "ratio", "spread", "summarize", "write_reports"]

MB = 1024 * 1024
ADAPTER = "embellama (LangChain)"
ORT_FP32 = "ONNX Runtime fp32"
ORT_INT8 = "ONNX Runtime int8"
Results = dict[str, list[dict[str, Any]]]


def spread(values: list[float]) -> tuple[float, float, float] | None:
    """``(median, min, max)`` of ``values``, or None if there are none."""
    clean = [v for v in values if isinstance(v, (int, float))]
    return (statistics.median(clean), min(clean), max(clean)) if clean else None


def _values(results: Results, label: str, metric: str) -> list[float]:
    return [r[metric] for r in results.get(label, []) if isinstance(r.get(metric), (int, float))]


def ratio(results: Results, a: str, b: str, metric: str, *, invert: bool = False) -> tuple[float, float, float] | None:
    """Per-round ratio ``a / b`` of ``metric`` (``b / a`` with ``invert``), as ``(median, min, max)`` over rounds."""
    by_round_b = {r["round"]: r.get(metric) for r in results.get(b, [])}
    ratios = []
    for r in results.get(a, []):
        va, vb = r.get(metric), by_round_b.get(r["round"])
        if isinstance(va, (int, float)) and isinstance(vb, (int, float)) and va > 0 and vb > 0:
            ratios.append(vb / va if invert else va / vb)
    return spread(ratios)


def min_cosine(vectors: np.ndarray, reference: np.ndarray) -> float:
    """Smallest row-wise cosine similarity between two equally shaped arrays."""
    a = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    b = reference / np.linalg.norm(reference, axis=1, keepdims=True)
    return float(np.min(np.sum(a * b, axis=1)))


def _sample(results: Results, label: str) -> np.ndarray | None:
    for r in results.get(label, []):
        path = r.get("sample_file")
        if path and Path(path).exists():
            with np.load(path) as f:
                return np.asarray(f["quality"])
    return None


def _quality(results: Results, reference: str) -> dict[str, float]:
    ref = _sample(results, reference)
    out: dict[str, float] = {}
    if ref is None:
        return out
    for label in results:
        vec = _sample(results, label)
        if vec is not None and vec.shape == ref.shape:
            out[label] = min_cosine(vec, ref)
    return out


def _fmt(s: tuple[float, float, float] | None, digits: int = 0, unit: str = "") -> str:
    if s is None:
        return "n/a"
    med, lo, hi = s
    return f"{med:.{digits}f}{unit} ({lo:.{digits}f}-{hi:.{digits}f})"


def _best_raw(results: Results) -> str | None:
    raws = [lbl for lbl in results if lbl.startswith("llama-cpp")]
    scored = [(spread(_values(results, lbl, "short")), lbl) for lbl in raws]
    scored = [(s[0], lbl) for s, lbl in scored if s]
    return max(scored)[1] if scored else None


def summarize(data: dict[str, Any]) -> dict[str, Any]:
    """Medians, spreads, ratios, quality and the verdict on each target of the issue."""
    phases = data["phases"]
    summary: dict[str, Any] = {}
    gguf = data["gguf_bytes"]
    main: Results = phases.get("main", {})
    if main:
        summary["quality_vs_st"] = _quality(main, "sentence-transformers")
        rows = {}
        for label, runs in main.items():
            rows[label] = {
                m: spread(_values(main, label, m))
                for m in (
                    "short",
                    "long",
                    "p50_ms",
                    "p95_ms",
                    "async_seq_s",
                    "async_conc_s",
                    "load_s",
                    "rss_load",
                    "rss_end",
                )
            }
            errors = [r["error"] for r in runs if "error" in r]
            rows[label]["threads"] = next((r["threads"] for r in runs if "threads" in r), "")
            rows[label]["errors"] = errors
        summary["main"] = rows
        best_raw = _best_raw(main)
        summary["best_raw"] = best_raw
        t: dict[str, Any] = {}
        t["short_vs_llamacppembeddings"] = ratio(main, "embellama", "LlamaCppEmbeddings", "short")
        t["short_vs_raw_best"] = ratio(main, "embellama", best_raw, "short") if best_raw else None
        t["short_vs_st"] = ratio(main, "embellama", "sentence-transformers", "short")
        t["long_vs_st"] = ratio(main, "embellama", "sentence-transformers", "long")
        t["adapter_short_vs_core"] = ratio(main, "embellama (LangChain)", "embellama", "short")
        for metric in ("short", "long"):  # the adapter users call vs fastembed's recipe on the same weights
            t[f"adapter_{metric}_vs_ort"] = ratio(main, ADAPTER, ORT_FP32, metric)
            t[f"adapter_{metric}_vs_ort_int8"] = ratio(main, ADAPTER, ORT_INT8, metric)
        t["async_speedup"] = ratio(main, "embellama", "embellama", "async_seq_s")  # placeholder, replaced below
        speedups = [r["async_seq_s"] / r["async_conc_s"] for r in main.get("embellama", []) if r.get("async_conc_s")]
        t["async_speedup"] = spread(speedups)
        t["p50_ms"] = spread(_values(main, "embellama", "p50_ms"))
        t["load_s"] = spread(_values(main, "embellama", "load_s"))
        t["rss_over_gguf"] = spread([v / gguf for v in _values(main, "embellama", "rss_end")])
        t["rss_load_over_gguf"] = spread([v / gguf for v in _values(main, "embellama", "rss_load")])
        summary["targets"] = t
    weights: Results = phases.get("weights", {})
    if weights:
        summary["quality_vs_f16"] = _quality(weights, "embellama F16")
        summary["weights"] = {lbl: spread(_values(weights, lbl, "short")) for lbl in weights}
        summary["weights_ratio"] = {lbl: ratio(weights, lbl, "embellama F16", "short") for lbl in weights}
    levers: Results = phases.get("levers", {})
    if levers:
        summary["levers"] = {
            lbl: {"short": spread(_values(levers, lbl, "short")), "p50_ms": spread(_values(levers, lbl, "p50_ms"))}
            for lbl in levers
        }
    contention: Results = phases.get("contention", {})
    if contention:
        summary["contention"] = {
            lbl: {
                "quiet": spread(_values(contention, lbl, "quiet")),
                "busy": spread(_values(contention, lbl, "busy")),
                "kept": spread([r["busy"] / r["quiet"] for r in runs if r.get("quiet") and r.get("busy")]),
            }
            for lbl, runs in contention.items()
        }
    return summary


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("**met**" if ok else "**not met**")


def _check(s: tuple[float, float, float] | None, threshold: float, *, below: bool = False) -> bool | None:
    if s is None:
        return None
    return s[0] < threshold if below else s[0] >= threshold


def _ort_rows(t: dict[str, Any], quality: dict[str, float]) -> list[tuple[str, str, bool | None]]:
    """Target rows: the LangChain adapter against ONNX Runtime (fastembed's CPU recipe), and the int8 graph's
    quality."""
    rows: list[tuple[str, str, bool | None]] = []
    for threshold, prefix in ((1.0, ""), (1.3, "Stretch: ")):
        for metric, name in (("short", "Short"), ("long", "Long")):
            s = t.get(f"adapter_{metric}_vs_ort")
            rows.append(
                (
                    f"{prefix}{name} throughput ≥ {threshold:.1f}x {ORT_FP32} (LangChain adapter)",
                    _fmt(s, 2, "x"),
                    _check(s, threshold),
                )
            )
    for metric, name in (("short", "Short"), ("long", "Long")):
        s = t.get(f"adapter_{metric}_vs_ort_int8")
        rows.append((f"{name} throughput vs {ORT_INT8} (LangChain adapter; report)", _fmt(s, 2, "x"), None))
    cos = quality.get(ORT_INT8)
    cos_cell = "n/a" if cos is None else f"{cos:.4f}"
    rows.append((f"{ORT_INT8}: min cosine vs sentence-transformers (report)", cos_cell, None))
    return rows


def render_markdown(data: dict[str, Any], summary: dict[str, Any]) -> str:
    """The Markdown report: main table, targets, weight types, levers, contention, and the conditions."""
    gguf_mb = data["gguf_bytes"] / MB
    tx = data["texts"]
    m = data["machine"]
    lines = [
        "# embellama benchmark",
        "",
        f"Default model {Path(data['gguf']).name} ({gguf_mb:.1f} MB; sentence-transformers uses the same weights "
        f"as safetensors). {m['cores']} cores ({m['cpu']}), Python {m['python']}. {data['rounds']} interleaved "
        f"round(s), each peer in a fresh process; cells are median (min-max over rounds). Load average "
        f"before/after: {m['load_before'][0]:.1f}/{m['load_after'][0]:.1f} (the machine is shared: other jobs "
        f"ran during the measurement, so absolute numbers are noisy; ratios come from the same rounds). "
        f"Run took {data.get('elapsed_s', 0) / 60:.1f} min.",
        "",
        f"Workloads: {data['sizes']['short']} short texts (mean {tx['short_mean_tokens']:.1f} tokens, max "
        f"{tx['short_max_tokens']}), {data['sizes']['long']} long texts (mean {tx['long_mean_tokens']:.0f} tokens, "
        f"{tx['long_min_tokens']}-{tx['long_max_tokens']}, all within the 256-token limit: nothing truncated), "
        f"latency over {data['sizes']['queries']} distinct single queries, {data['sizes']['n_async']} async queries "
        "(sequential awaits vs `asyncio.gather`). Token counts include [CLS]/[SEP].",
        "",
    ]
    if "main" in summary:
        q = summary.get("quality_vs_st", {})
        lines += [
            "| Peer | Instances x threads | Short texts/s | Long texts/s | Query p50 ms | Query p95 ms | "
            "64 async: sequential / concurrent s | Load s | RSS added after the run, MB (x GGUF) | Min cosine vs ST |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        best = summary.get("best_raw")
        for label, row in summary["main"].items():
            name = label + (" (best raw)" if label == best else "")
            rss = row["rss_end"]
            rss_cell = "-" if rss is None else f"{rss[0] / MB:.0f} ({rss[0] / data['gguf_bytes']:.1f}x)"
            asyn = "-"
            if row["async_seq_s"] and row["async_conc_s"]:
                asyn = f"{row['async_seq_s'][0]:.3f} / {row['async_conc_s'][0]:.3f}"
            cos = f"{q[label]:.4f}" if label in q else "-"
            err = f" ⚠ {len(row['errors'])} failed run(s)" if row["errors"] else ""
            lines.append(
                f"| {name}{err} | {row['threads']} | {_fmt(row['short'])} | {_fmt(row['long'], 1)} | "
                f"{_fmt(row['p50_ms'], 1)} | {_fmt(row['p95_ms'], 1)} | {asyn} | {_fmt(row['load_s'], 2)} | "
                f"{rss_cell} | {cos} |"
            )
        t = summary["targets"]
        lines += [
            "",
            "## Targets",
            "",
            "| Target | Measured (median, min-max over rounds) | Verdict |",
            "|---|---|---|",
        ]
        rss = t["rss_over_gguf"]
        cont = summary.get("contention", {}).get("embellama", {}).get("kept")
        rows = [
            (
                "Short throughput ≥ 2.5x LlamaCppEmbeddings",
                _fmt(t["short_vs_llamacppembeddings"], 2, "x"),
                _check(t["short_vs_llamacppembeddings"], 2.5),
            ),
            (
                f"Short throughput ≥ 1.3x raw `Llama.embed` best ({summary.get('best_raw')})",
                _fmt(t["short_vs_raw_best"], 2, "x"),
                _check(t["short_vs_raw_best"], 1.3),
            ),
            (
                "Stretch: short throughput ≥ 1.0x sentence-transformers (default model)",
                _fmt(t["short_vs_st"], 2, "x"),
                _check(t["short_vs_st"], 1.0),
            ),
            ("Long texts vs sentence-transformers (report)", _fmt(t["long_vs_st"], 2, "x"), None),
            *_ort_rows(t, q),
            ("Single short query p50 < 5 ms", _fmt(t["p50_ms"], 2, " ms"), _check(t["p50_ms"], 5.0, below=True)),
            (
                "64 concurrent async ≥ 2x faster than sequential",
                _fmt(t["async_speedup"], 2, "x"),
                _check(t["async_speedup"], 2.0),
            ),
            (
                "RSS added by loading the model < 2x GGUF size",
                _fmt(t["rss_load_over_gguf"], 2, "x"),
                _check(t["rss_load_over_gguf"], 2.0, below=True),
            ),
            (
                "RSS added after serving the whole run < 2x GGUF size (llama.cpp's per-context compute/output buffers)",
                _fmt(rss, 2, "x"),
                _check(rss, 2.0, below=True),
            ),
            ("Default model load < 1 s", _fmt(t["load_s"], 2, " s"), _check(t["load_s"], 1.0, below=True)),
            (
                "With a competing busy process ≥ 40% of quiet throughput",
                _fmt(None if cont is None else tuple(100 * v for v in cont), 0, "%"),
                _check(cont, 0.4),
            ),
        ]
        for name, measured, ok in rows:
            lines.append(f"| {name} | {measured} | {_verdict(ok)} |")
        lines.append("")
        lines.append(f"LangChain adapter vs core, short texts: {_fmt(t['adapter_short_vs_core'], 2, 'x')}.")
        for label, row in summary["main"].items():
            for e in row["errors"][:1]:
                lines.append(f"\n⚠ {label}: {e}")
    if "weights" in summary:
        qf = summary.get("quality_vs_f16", {})
        lines += [
            "",
            "## Weight types (embellama defaults, short texts)",
            "",
            "| Weights | Short texts/s | vs F16 (same rounds) | Min cosine vs F16 |",
            "|---|---|---|---|",
        ]
        for label, s in summary["weights"].items():
            cos = f"{qf[label]:.4f}" if label in qf else "-"
            lines.append(f"| {label} | {_fmt(s)} | {_fmt(summary['weights_ratio'][label], 2, 'x')} | {cos} |")
    if "levers" in summary:
        lines += [
            "",
            "## Levers (embellama, short texts)",
            "",
            "| Configuration | Short texts/s | Query p50 ms |",
            "|---|---|---|",
        ]
        for label, row in summary["levers"].items():
            lines.append(f"| {label} | {_fmt(row['short'])} | {_fmt(row['p50_ms'], 1)} |")
    if "contention" in summary:
        lines += [
            "",
            "## Competing load (one busy-loop process beside the peer, short texts)",
            "",
            "| Peer | Quiet texts/s | Busy texts/s | Kept |",
            "|---|---|---|---|",
        ]
        for label, row in summary["contention"].items():
            kept = row["kept"]
            kept_cell = "-" if kept is None else _fmt(tuple(100 * v for v in kept), 0, "%")
            lines.append(f"| {label} | {_fmt(row['quiet'])} | {_fmt(row['busy'])} | {kept_cell} |")
    return "\n".join(lines) + "\n"


def render_chart(summary: dict[str, Any], path: Path) -> None:
    """Bar chart of short and long throughput per peer, with min-max whiskers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summary.get("main", {})
    labels = list(rows)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, metric, title in ((axes[0], "short", "Short texts (~20 tokens)"), (axes[1], "long", "Long texts (~250)")):
        meds, errs = [], [[], []]
        for label in labels:
            s = rows[label][metric] or (0.0, 0.0, 0.0)
            meds.append(s[0])
            errs[0].append(s[0] - s[1])
            errs[1].append(s[2] - s[0])
        colors = ["tab:green" if lbl.startswith("embellama") else "tab:gray" for lbl in labels]
        ax.barh(labels, meds, xerr=errs, color=colors, capsize=3)
        ax.invert_yaxis()
        ax.set_title(title)
        ax.set_xlabel("texts per second (median, min-max)")
    axes[1].set_yticklabels([])
    fig.suptitle(
        "embellama vs llama-cpp-python, LangChain, sentence-transformers, ONNX Runtime (same weights, same machine)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items() if k != "sample_file"}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    return obj


def write_reports(data: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """Write ``latest.json`` (raw numbers + summary), ``latest.md`` and ``latest.png``; return the summary."""
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = summarize(data)
    (out_dir / "latest.md").write_text(render_markdown(data, summary))
    if summary.get("main"):
        render_chart(summary, out_dir / "latest.png")
    (out_dir / "latest.json").write_text(json.dumps(_jsonable(dict(data, summary=summary)), indent=1))
    return summary
