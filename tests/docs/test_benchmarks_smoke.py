"""The benchmark harness runs end to end on a tiny workload and writes a well-formed report (no timing checks)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.peers import PEERS, PeerSpec
from benchmarks.report import min_cosine, ratio, spread
from benchmarks.run import main, run_benchmark
from benchmarks.workloads import make_texts, make_workload


def test_workloads_are_deterministic_and_fit_the_token_target() -> None:
    def count(text: str) -> int:
        return len(text.split()) + 2  # a stand-in tokenizer: one token per word plus [CLS]/[SEP]

    a = make_workload("w", 20, 22, count, seed=1)
    assert a == make_workload("w", 20, 22, count, seed=1)
    assert a != make_workload("w", 20, 22, count, seed=2)
    assert all(15 <= n <= 22 for n in a.tokens) and a.tokens == [count(t) for t in a.texts]
    capped = make_workload("w", 5, 300, count, seed=3, limit=256)
    assert max(capped.tokens) <= 256
    assert make_texts(3, 5, seed=4) == make_texts(3, 5, seed=4)


def test_report_helpers() -> None:
    import numpy as np

    assert spread([3.0, 1.0, 2.0]) == (2.0, 1.0, 3.0)
    assert spread([]) is None
    results = {
        "a": [{"round": 0, "x": 4.0}, {"round": 1, "x": 9.0}],
        "b": [{"round": 0, "x": 2.0}, {"round": 1, "x": 3.0}],
    }
    assert ratio(results, "a", "b", "x") == (2.5, 2.0, 3.0)
    v = np.array([[1.0, 0.0], [0.0, 2.0]], dtype=np.float32)
    assert min_cosine(v, v) == pytest.approx(1.0)
    assert min_cosine(v, v[::-1].copy()) == pytest.approx(0.0)


@pytest.mark.timeout(300)
def test_harness_end_to_end(tmp_path: Path) -> None:
    """Every phase on a few texts, 1 round, a core peer, ONNX Runtime fp32 and the sentence-transformers reference."""
    peers = [p for p in PEERS if p.kind in ("embellama", "sentence-transformers", "onnxruntime")]
    data = run_benchmark(
        contention=peers[:1],
        rounds=1,
        quick=True,
        out_dir=tmp_path,
        peers=peers,
        phases=("main", "contention"),
        log=lambda _: None,
    )
    main_results = data["phases"]["main"]
    assert set(main_results) == {p.label for p in peers}
    for label, runs in main_results.items():
        assert len(runs) == 1 and "error" not in runs[0], runs
        run = runs[0]
        for key in ("load_s", "short", "long", "p50_ms", "p95_ms", "rss_load", "rss_end"):
            assert run[key] > 0 or key.startswith("rss"), (label, key)
    core = main_results["embellama"][0]
    assert core["async_conc_s"] > 0 and core["async_seq_s"] > 0
    # the same weights: embellama must agree with sentence-transformers, which checks both peers ran for real
    assert data["summary"]["quality_vs_st"]["embellama"] > 0.99
    assert data["summary"]["quality_vs_st"]["ONNX Runtime fp32"] > 0.9999  # the export is checked, not just run
    md = (tmp_path / "latest.md").read_text()
    assert "| embellama |" in md and "| sentence-transformers |" in md and "## Targets" in md
    assert "## Competing load" in md
    assert (tmp_path / "latest.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((tmp_path / "latest.json").read_text())
    assert saved["rounds"] == 1 and saved["summary"]["targets"]["short_vs_st"] is not None
    assert saved["texts"]["long_max_tokens"] <= 256


def test_failed_peer_is_reported_not_fatal(tmp_path: Path) -> None:
    bad = PeerSpec("broken", "embellama", {"model_path": str(tmp_path / "missing.gguf")})
    data = run_benchmark(rounds=1, quick=True, out_dir=tmp_path, peers=[bad], phases=("main",), log=lambda _: None)
    assert "error" in data["phases"]["main"]["broken"][0]
    assert "failed run" in (tmp_path / "latest.md").read_text()


def test_command_line_rejects_unknown_options() -> None:
    with pytest.raises(SystemExit):
        main(["--no-such-option"])


def test_call_path_traces_embellama_modules_on_every_thread() -> None:
    """The tracer names the embellama modules that ran, on the threads they ran on, and nothing else."""
    import threading

    from benchmarks.call_path import profiling
    from embellama.texts import encode_text

    def on_a_thread() -> None:
        worker = threading.Thread(target=encode_text, args=("b", 1), name="helper")
        worker.start()
        worker.join()

    with profiling() as trace:
        path = trace(lambda: (encode_text("a", 0), sorted([3, 1])))
        both = trace(on_a_thread)
    assert path.modules == {"embellama.texts": {threading.current_thread().name}}
    assert both.modules == {"embellama.texts": {"helper"}} and both.threads == {"helper"}
    assert path.lines()[-3:-1] == ["modules: 1", "threads: 1"]


def test_call_path_of_a_langchain_call(model_path: Path) -> None:
    from benchmarks.call_path import measure

    path = measure(model_path, n_texts=2)
    assert {"embellama_integrations.langchain", "embellama.engine.engine", "embellama.model.native"} <= set(
        path.modules
    )
    assert len(path.threads) == 2  # the caller's and one worker's
    assert path.calls_from("embellama.engine.engine") <= path.calls_from("embellama.engine.request")
