"""Process isolation under real native crashes: GGML_ASSERT aborts and signals delivered to the model's child.

No Python exception stands in for a crash: the child either trips a genuine ``GGML_ASSERT`` (a test-only
``sitecustomize`` in ``tests/fixtures/child_hooks`` decodes a batch over ``n_ubatch`` for one marker text, bypassing
validation) or is killed with ``SIGSEGV``/``SIGKILL`` mid-batch.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest

from embellama import (
    EmbeddingEngine,
    InvalidInputError,
    ModelConfig,
    ModelCrashedError,
    ModelLoadError,
    ModelNotFoundError,
)
from embellama.runtime.isolation import ProcessBackend, describe_exit
from tests.conftest import BATCH_TOL

pytestmark = pytest.mark.timeout(300)

NAME = "iso"
TEXTS = [f"isolated text number {i} about topic {i % 7}" for i in range(40)]
ABORT = "embellama test: trip a GGML_ASSERT in the child"
HOOKS = str(Path(__file__).parents[1] / "fixtures" / "child_hooks")


@pytest.fixture(scope="module", autouse=True)
def abort_hook() -> Iterator[None]:
    """Children started by this module's engines trip a real GGML_ASSERT on the ABORT text."""
    saved = {k: os.environ.get(k) for k in ("PYTHONPATH", "EMBELLAMA_TEST_ABORT_MARKER")}
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (HOOKS, saved["PYTHONPATH"]) if p)
    os.environ["EMBELLAMA_TEST_ABORT_MARKER"] = ABORT
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(autouse=True)
def small_rounds(monkeypatch: pytest.MonkeyPatch) -> None:
    """One 8-text job per worker round, so a batch spans many rounds and a kill lands mid-batch."""
    monkeypatch.setattr("embellama.runtime.scheduler.COALESCE_TEXTS", 8)


@pytest.fixture(scope="module")
def reference(engine: EmbeddingEngine) -> np.ndarray:
    """The same texts embedded in-process (thread isolation)."""
    rows: np.ndarray = engine.embed_batch("minilm", TEXTS, output="numpy")
    return rows


@pytest.fixture(scope="module")
def iso(model_path: Path) -> Iterator[EmbeddingEngine]:
    with EmbeddingEngine(cache_size=0, chunk_size=8) as eng:
        eng.load_model(ModelConfig(model_path=model_path, model_name=NAME, isolation="process", n_workers=1))
        yield eng


def spawned_children() -> set[int]:
    """Pids of this process's model children."""
    pids = set()
    for child in psutil.Process().children():
        try:
            if "embellama.runtime.child" in " ".join(child.cmdline()):
                pids.add(child.pid)
        except psutil.Error:
            pass
    return pids


def child_pid(engine: EmbeddingEngine, name: str = NAME) -> int:
    pids = engine.worker_pids(name)
    assert len(pids) == 1 and pids[0] is not None and pids[0] != os.getpid()
    return pids[0]


def kill_mid_batch(engine: EmbeddingEngine, sig: int, name: str = NAME, n: int = 120) -> Future[Any]:
    """Start a large batch in a thread, wait until the child has finished some chunks, then send ``sig``."""
    started = threading.Event()
    result: Future[Any] = Future()
    pid = child_pid(engine, name)

    def run() -> None:
        try:
            texts = [f"long batch text {i}" for i in range(n)]
            result.set_result(
                engine.embed_batch(name, texts, output="numpy", progress=lambda done, total: started.set())
            )
        except BaseException as exc:  # handed to the test
            result.set_exception(exc)

    threading.Thread(target=run, daemon=True).start()
    assert started.wait(120), "the batch never made progress"
    os.kill(pid, sig)
    return result


def test_results_equal_in_process_results(iso: EmbeddingEngine, reference: np.ndarray) -> None:
    rows = iso.embed_batch(NAME, TEXTS, output="numpy")
    np.testing.assert_allclose(rows, reference, atol=BATCH_TOL)
    info = iso.model_info(NAME)
    assert info.isolation == "process" and info.dimensions == 384


def test_invalid_input_errors_cross_the_process_boundary(iso: EmbeddingEngine) -> None:
    with pytest.raises(InvalidInputError) as info:
        iso.embed_batch(NAME, ["ok", "\ud800", "fine"])
    assert info.value.index == 1 and "Unicode" in info.value.reason
    result = iso.embed_batch(NAME, ["ok", None, "a " * 300], on_error="collect")
    assert sorted(result.errors) == [1, 2] and result.errors[2].n_tokens == 302


def test_the_prompt_crosses_the_process_boundary_once_per_job(iso: EmbeddingEngine, engine: EmbeddingEngine) -> None:
    """The job carries the prompt; the child joins it per text, and refuses an over-limit one with a typed error."""
    texts = TEXTS[:10]
    joined = engine.embed_batch("minilm", ["query: " + t for t in texts], output="numpy")
    np.testing.assert_allclose(iso.embed_batch(NAME, texts, output="numpy", prompt="query: "), joined, atol=BATCH_TOL)
    with pytest.raises(InvalidInputError) as info:
        iso.embed_batch(NAME, texts, prompt="word " * 300)
    assert info.value.subject == "prompt" and info.value.n_tokens == 302


def test_ggml_assert_in_child_becomes_model_crashed_error(iso: EmbeddingEngine, reference: np.ndarray) -> None:
    before = child_pid(iso)
    backend = iso.registry.serving(NAME).pool.workers[0].backend
    assert isinstance(backend, ProcessBackend)
    crashes = backend.crashes
    poison = iso.registry.submit(NAME, [ABORT])
    with pytest.raises(ModelCrashedError, match="SIGABRT") as info:
        poison.result(timeout=120)
    assert NAME in str(info.value) and str(before) in str(info.value)
    assert backend.crashes == crashes + 1
    # the parent is alive and the next request is served by a fresh child
    np.testing.assert_allclose(iso.embed_batch(NAME, TEXTS, output="numpy"), reference, atol=BATCH_TOL)
    assert child_pid(iso) != before
    assert not psutil.pid_exists(before) or psutil.Process(before).status() == psutil.STATUS_ZOMBIE


def test_requests_in_flight_with_a_crash_all_fail_typed(iso: EmbeddingEngine) -> None:
    """Jobs coalesced into the crashing round fail with ModelCrashedError; none hangs."""
    busy = iso.registry.submit(NAME, [f"warm {i}" for i in range(40)])
    batch = [iso.registry.submit(NAME, [f"bystander {i}"]) for i in range(5)]
    poison = iso.registry.submit(NAME, [ABORT])
    outcomes: list[Any] = []
    for f in [busy, *batch, poison]:
        try:
            outcomes.append(len(f.result(timeout=120).vectors))
        except ModelCrashedError as exc:
            outcomes.append(type(exc))
    assert outcomes[-1] is ModelCrashedError
    assert outcomes[0] in (ModelCrashedError, 40)
    assert all(o in (ModelCrashedError, 1) for o in outcomes[1:-1])
    assert len(iso.embed(NAME, "served after the crash")) == 384


@pytest.mark.parametrize("sig", [signal.SIGSEGV, signal.SIGKILL], ids=["SIGSEGV", "SIGKILL"])
def test_signal_mid_batch(iso: EmbeddingEngine, reference: np.ndarray, sig: signal.Signals) -> None:
    before = child_pid(iso)
    pending = kill_mid_batch(iso, sig)
    with pytest.raises(ModelCrashedError, match=sig.name):
        pending.result(timeout=120)
    np.testing.assert_allclose(iso.embed_batch(NAME, TEXTS, output="numpy"), reference, atol=BATCH_TOL)
    assert child_pid(iso) != before


async def test_async_request_sees_the_crash(iso: EmbeddingEngine) -> None:
    import asyncio

    task = asyncio.ensure_future(iso.aembed_batch(NAME, [ABORT]))
    with pytest.raises(ModelCrashedError):
        await asyncio.wait_for(task, 120)
    assert len(await iso.aembed(NAME, "async after crash")) == 384


def test_transparent_retry_on_a_restarted_worker(model_path: Path, reference: np.ndarray) -> None:
    with EmbeddingEngine(cache_size=0, chunk_size=8) as eng:
        eng.load_model(model_path=model_path, model_name="retry", isolation="process", crash_retries=2, n_workers=1)
        pending = kill_mid_batch(eng, signal.SIGKILL, "retry", n=120)
        rows = pending.result(timeout=180)  # the killed chunks were re-run on a fresh child
        expected = eng.embed_batch("retry", [f"long batch text {i}" for i in range(120)], output="numpy")
        np.testing.assert_allclose(rows, expected, atol=BATCH_TOL)
        np.testing.assert_allclose(eng.embed_batch("retry", TEXTS, output="numpy"), reference, atol=BATCH_TOL)
        # a poison job exhausts its retries alone; jobs that crashed with it are retried one by one and succeed
        busy = eng.registry.submit("retry", [f"warm {i}" for i in range(40)])
        bystanders = [eng.registry.submit("retry", [TEXTS[i]]) for i in range(3)]
        poison = eng.registry.submit("retry", [ABORT])
        busy.result(timeout=180)
        for i, f in enumerate(bystanders):
            np.testing.assert_allclose(f.result(timeout=180).vectors[0], reference[i], atol=BATCH_TOL)
        with pytest.raises(ModelCrashedError, match="SIGABRT"):
            poison.result(timeout=180)
        backend = eng.registry.serving("retry").pool.workers[0].backend
        assert isinstance(backend, ProcessBackend) and backend.crashes >= 4  # 1 kill + 3 poison attempts


def test_load_errors_come_back_typed(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf at all")
    children = spawned_children()
    with EmbeddingEngine() as eng:
        with pytest.raises(ModelNotFoundError):
            eng.load_model(model_path=tmp_path / "missing.gguf", isolation="process")
        with pytest.raises(ModelLoadError, match="not a GGUF"):
            eng.load_model(model_path=bad, isolation="process")
        assert eng.models == {}
    assert spawned_children() <= children


def test_child_killed_while_loading_is_a_load_error(model_path: Path) -> None:
    """A child that dies before it has loaded (as on a crash-on-load) is a ModelLoadError, not a hang."""
    me = psutil.Process()
    stop = threading.Event()
    killed: list[int] = []
    existing = {c.pid for c in me.children()}

    def killer() -> None:
        while not stop.is_set():
            for child in me.children():
                try:
                    if child.pid in existing or "resource_tracker" in " ".join(child.cmdline()):
                        continue
                    os.kill(child.pid, signal.SIGKILL)
                    killed.append(child.pid)
                except (ProcessLookupError, psutil.Error):
                    pass
            time.sleep(0.001)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    try:
        with EmbeddingEngine() as eng, pytest.raises(ModelLoadError, match=r"SIGKILL.*while loading"):
            eng.load_model(model_path=model_path, model_name="doomed", isolation="process")
    finally:
        stop.set()
        t.join()
    assert killed


def test_close_stops_children(model_path: Path) -> None:
    children = spawned_children()
    eng = EmbeddingEngine()
    eng.load_model(model_path=model_path, model_name="two", isolation="process", n_workers=2)
    pids = eng.worker_pids("two")
    assert len(set(pids)) == 2 and os.getpid() not in pids
    assert len(eng.embed_batch("two", TEXTS)) == len(TEXTS)
    eng.close()
    eng.close()
    for pid in pids:
        assert pid is not None and not psutil.pid_exists(pid)
    assert spawned_children() <= children


def test_thread_isolation_reports_own_pid(engine: EmbeddingEngine) -> None:
    assert set(engine.worker_pids("minilm")) == {os.getpid()}


def test_describe_exit() -> None:
    assert describe_exit(None) == "closed its connection"
    assert describe_exit(-signal.SIGSEGV) == "was killed by SIGSEGV"
    assert describe_exit(-200) == "was killed by signal 200"
    assert describe_exit(3) == "exited with status 3"
    assert "without answering" in describe_exit(0)


def test_quantized_model_in_a_child(quantized_paths: dict[str, Path], model_path: Path) -> None:
    """Quantized weights are where native builds crash; with isolation they load in (and stay in) the child."""
    with EmbeddingEngine(cache_size=0) as eng:
        eng.load_model(model_path=quantized_paths["Q8_0"], model_name="q8", isolation="process")
        eng.load_model(model_path=model_path, model_name="f16")
        q8 = eng.embed_batch("q8", TEXTS[:8], output="numpy")
        f16 = eng.embed_batch("f16", TEXTS[:8], output="numpy")
    assert np.isfinite(q8).all()
    assert float(np.min(np.sum(q8 * f16, axis=1))) > 0.98


def test_child_exits_when_the_parent_connection_closes(model_path: Path) -> None:
    """A child whose parent vanished (socket closed without a stop request) unloads and exits by itself."""
    backend = ProcessBackend(ModelConfig(model_path=model_path, n_workers=1))
    backend.load()
    child = backend._child
    assert child is not None
    backend._child = None
    child.conn.close()
    assert child.process.wait(60) == 0
    backend.close()  # nothing left to close: harmless


def test_unpicklable_outcomes_are_described_not_lost() -> None:
    import multiprocessing

    from embellama.errors import EmbeddingError
    from embellama.runtime.child import send

    class Local(Exception):  # a local class cannot be pickled
        pass

    parent, child = multiprocessing.Pipe()
    send(child, ("ok", [Local("boom"), 1]))
    status, value = parent.recv()
    assert status == "ok" and isinstance(value[0], EmbeddingError) and "boom" in str(value[0]) and value[1] == 1
    send(child, ("error", Local("load failed")))
    status, value = parent.recv()
    assert status == "error" and isinstance(value, EmbeddingError) and "load failed" in str(value)
