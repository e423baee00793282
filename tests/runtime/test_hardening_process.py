"""Process-level hardening: ``os.fork()``, stopped children, interpreter exit mid-decode, dropped engines,
scripts without a ``__main__`` guard, and children that die while loading.

Everything is real: the default model, real child processes, real signals (SIGSTOP, SIGKILL) and real
interpreter exits in subprocesses. Each scenario is a behaviour that once failed. Every wait is bounded;
nothing asserts on speed (the bounds are only there so a hang fails instead of blocking the run).
"""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest

from embellama import EmbeddingEngine, ModelLoadError, ModelTimeoutError
from embellama.runtime.isolation import ProcessBackend

pytestmark = pytest.mark.timeout(300)

DIMS = 384
CHILD_MARK = "embellama.runtime.child"


# ---------------------------------------------------------------------- helpers
def _run_script(
    tmp_path: Path, source: str, *args: str, timeout: float = 120, name: str = "script.py"
) -> subprocess.CompletedProcess[str]:
    """Write ``source`` to a file in ``tmp_path`` and run it with this interpreter."""
    script = tmp_path / name
    script.write_text(textwrap.dedent(source))
    return subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def _model_children() -> set[int]:
    """Pids of this process's model children (``python -m embellama.runtime.child``)."""
    pids = set()
    for child in psutil.Process().children():
        try:
            if CHILD_MARK in " ".join(child.cmdline()):
                pids.add(child.pid)
        except psutil.Error:
            pass
    return pids


def _is_gone(pid: int) -> bool:
    """The process no longer runs (never existed, reaped, or a zombie awaiting its parent's wait)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _wait_until(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def _child_pid(engine: EmbeddingEngine, name: str) -> int:
    pids = engine.worker_pids(name)
    assert len(pids) == 1 and pids[0] is not None and pids[0] != os.getpid(), pids
    return pids[0]


def _backend(engine: EmbeddingEngine, name: str) -> ProcessBackend:
    backend = engine.registry.serving(name).pool.workers[0].backend
    assert isinstance(backend, ProcessBackend)
    return backend


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


@contextmanager
def _kill_first_model_child() -> Iterator[list[int]]:
    """SIGKILL the first new model child that appears (as soon as its command line shows it), and only it."""
    me = psutil.Process()
    existing = {c.pid for c in me.children()}
    killed: list[int] = []
    stop = threading.Event()

    def killer() -> None:
        while not stop.is_set():
            for child in me.children():
                if child.pid in existing:
                    continue
                try:
                    if CHILD_MARK not in " ".join(child.cmdline()):
                        continue  # between fork and exec: not the child yet
                    os.kill(child.pid, signal.SIGKILL)
                except (ProcessLookupError, psutil.Error):
                    continue
                killed.append(child.pid)
                return
            time.sleep(0.001)

    thread = threading.Thread(target=killer, name="test-killer", daemon=True)
    thread.start()
    try:
        yield killed
    finally:
        stop.set()
        thread.join(30)


# ---------------------------------------------------------------------- 1. fork
_FORK_SCRIPT = """
import os, signal, sys, traceback
import numpy as np
from embellama import EmbeddingEngine

engine = EmbeddingEngine(cache_size=0)
engine.load_model(model_path=sys.argv[1], model_name="m", isolation="thread", n_workers=1)
assert len(engine.embed("m", "embedded by the parent before the fork")) == 384
text = "a brand new text that only the forked child embeds first"
out = sys.argv[2]

pid = os.fork()
if pid == 0:
    signal.alarm(60)  # default action kills the child: a hang fails instead of blocking
    try:
        vector = np.asarray(engine.embed("m", text), dtype=np.float32)
        assert engine.worker_pids("m") == [os.getpid()], engine.worker_pids("m")
        again = engine.embed_batch("m", [text, "second text in the child"], output="numpy")
        assert again.shape == (2, 384)
        np.save(out, vector)
        sys.stdout.flush()
        os._exit(0)
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)

_, status = os.waitpid(pid, 0)
print("child status", os.waitstatus_to_exitcode(status), flush=True)
parent = np.asarray(engine.embed("m", text), dtype=np.float32)  # the parent's engine still works
child = np.load(out)
cos = float(np.dot(parent, child) / (np.linalg.norm(parent) * np.linalg.norm(child)))
print("cosine", repr(cos), flush=True)
assert engine.worker_pids("m") == [os.getpid()]
assert engine.embed_batch("m", ["parent after fork a", "parent after fork b"], output="numpy").shape == (2, 384)
engine.close()
print("parent ok", flush=True)
"""


def test_fork_child_reloads_lazily_and_matches_the_parent(model_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "child_vector.npy"
    proc = _run_script(tmp_path, _FORK_SCRIPT, str(model_path), str(out), name="fork.py")
    report = f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-3000:]}"
    assert proc.returncode == 0, report
    lines = proc.stdout.splitlines()
    assert "child status 0" in lines, report
    cosines = [float(line.split()[1]) for line in lines if line.startswith("cosine ")]
    assert len(cosines) == 1 and cosines[0] > 0.9999, report
    assert lines[-1] == "parent ok", report
    assert "Traceback" not in proc.stderr, report


# ---------------------------------------------------------------------- 2. stopped child
def test_sigstopped_child_times_out_is_killed_and_replaced(model_path: Path) -> None:
    name = "stopped"
    with EmbeddingEngine(cache_size=0) as eng:
        eng.load_model(model_path=model_path, model_name=name, isolation="process", n_workers=1, request_timeout=3)
        reference = np.asarray(eng.embed(name, "served before and after the stop"), dtype=np.float32)
        backend = _backend(eng, name)

        # mid-request: a batch is running when the child is stopped
        first = _child_pid(eng, name)
        started = threading.Event()
        result: Future[Any] = Future()

        def run() -> None:
            try:
                texts = [f"a long batch text number {i} that keeps the child busy" for i in range(3000)]
                result.set_result(eng.embed_batch(name, texts, progress=lambda done, total: started.set()))
            except BaseException as exc:  # handed to the test
                result.set_exception(exc)

        threading.Thread(target=run, daemon=True).start()
        assert started.wait(120), "the batch never made progress"
        os.kill(first, signal.SIGSTOP)
        stopped_at = time.monotonic()
        with pytest.raises(ModelTimeoutError) as info:
            result.result(timeout=60)
        assert time.monotonic() - stopped_at < 20
        assert isinstance(info.value, TimeoutError) and str(first) in str(info.value)
        assert _wait_until(lambda: _is_gone(first), 10), f"stopped child {first} still alive"
        assert backend.crashes == 1
        vector = np.asarray(eng.embed(name, "served before and after the stop"), dtype=np.float32)
        assert _cosine(vector, reference) > 0.9999
        second = _child_pid(eng, name)
        assert second != first

        # before a request: the child is stopped while idle
        os.kill(second, signal.SIGSTOP)
        asked_at = time.monotonic()
        with pytest.raises(ModelTimeoutError):
            eng.embed(name, "sent to a stopped child")
        elapsed = time.monotonic() - asked_at
        assert 2.9 <= elapsed < 20, elapsed  # not before request_timeout, and not a hang
        assert _wait_until(lambda: _is_gone(second), 10), f"stopped child {second} still alive"
        assert backend.crashes == 2
        assert len(eng.embed(name, "served by a third child")) == DIMS
        third = _child_pid(eng, name)
        assert third not in (first, second)


def test_close_with_a_sigstopped_child_kills_it(model_path: Path) -> None:
    before = _model_children()
    eng = EmbeddingEngine(cache_size=0)
    eng.load_model(model_path=model_path, model_name="frozen", isolation="process", n_workers=1, request_timeout=3)
    assert len(eng.embed("frozen", "before the stop")) == DIMS
    pid = _child_pid(eng, "frozen")
    os.kill(pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        eng.close(timeout=2)
        elapsed = time.monotonic() - t0
        assert elapsed < 15, elapsed
        # close(timeout=2) promises to kill a child still running at its deadline: it must be gone when close
        # returns (a short grace for the kill to land), not left stopped for a later clean-up to find
        gone_after_close = _wait_until(lambda: _is_gone(pid), 1.0)
        assert gone_after_close, f"close() returned after {elapsed:.1f} s with the stopped child {pid} still alive"
        assert eng.registry.running_threads() == []
    finally:
        if not _is_gone(pid):  # leave nothing stopped behind, whatever happened
            os.kill(pid, signal.SIGKILL)
    assert _wait_until(lambda: _model_children() <= before | {pid}, 10)


# ---------------------------------------------------------------------- 3. exit mid-decode
_EXIT_SCRIPT = """
import sys, threading
from embellama import EngineClosedError

kind, model_path = sys.argv[1], sys.argv[2]
texts = [f"interpreter exit while llama.cpp decodes text number {i} of a big batch" for i in range(4000)]
started = threading.Event()

def progress(done, total):
    started.set()

def watch(engine):
    # the adapters pass no progress callback: observe the engine call they make
    original = engine.embed_batch
    def spy(name, batch, **kwargs):
        kwargs["progress"] = progress
        return original(name, batch, **kwargs)
    engine.embed_batch = spy

if kind == "engine":
    from embellama import EmbeddingEngine
    engine = EmbeddingEngine(cache_size=0)
    engine.load_model(model_path=model_path, model_name="m", isolation="thread", n_workers=1)
    work = lambda: engine.embed_batch("m", texts, progress=progress)
elif kind == "langchain":
    from embellama_integrations.langchain import EmbellamaEmbeddings
    lc = EmbellamaEmbeddings(model_path=model_path, preload=True)
    watch(lc.client.engine)
    work = lambda: lc.embed_documents(texts)
else:
    from embellama_integrations.llama_index import EmbellamaEmbedding
    li = EmbellamaEmbedding(model_path=model_path, embed_batch_size=2048, preload=True)
    watch(li.client.engine)
    work = lambda: li.get_text_embedding_batch(texts)

def run():
    try:
        work()
    except EngineClosedError:  # the clear error a request still running at exit gets
        pass

threading.Thread(target=run, daemon=True).start()
assert started.wait(120), "the batch never made progress"
print("exiting mid-batch", flush=True)
"""


@pytest.mark.parametrize("kind", ["engine", "langchain", "llama_index"])
def test_interpreter_exit_while_inside_llama_cpp(model_path: Path, tmp_path: Path, kind: str) -> None:
    for run in range(3):
        proc = _run_script(tmp_path, _EXIT_SCRIPT, kind, str(model_path), name=f"exit_{kind}.py")
        report = f"run {run}: rc={proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-3000:]}"
        assert proc.returncode == 0, report  # negative: died by a signal (SIGSEGV/SIGABRT in static destructors)
        assert proc.stdout.strip() == "exiting mid-batch", report
        assert "Traceback" not in proc.stderr and "Segmentation" not in proc.stderr, report


# ---------------------------------------------------------------------- 7. dropped engines
def _embellama_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("embellama-")}


def test_dropped_engines_stop_their_worker_threads(model_path: Path) -> None:
    gc.collect()
    before = _embellama_threads()
    for i in range(10):
        eng = EmbeddingEngine(cache_size=0)
        eng.load_model(model_path=model_path, model_name=f"dropped{i}", n_workers=1)
        assert len(eng.embed(f"dropped{i}", f"text for dropped engine {i}")) == DIMS
        assert len(_embellama_threads() - before) >= 1
        del eng  # no close()
    gc.collect()
    assert _wait_until(lambda: _embellama_threads() <= before, 10), sorted(
        t.name for t in _embellama_threads() - before
    )


# ---------------------------------------------------------------------- 11. no __main__ guard
_NO_GUARD = """
import os, sys
from embellama import EmbeddingEngine
engine = EmbeddingEngine()
engine.load_model(model_path=sys.argv[1], model_name="m", isolation="process", n_workers=1)
print(len(engine.embed("m", "a script without a main guard")))
print(engine.worker_pids("m")[0] not in (None, os.getpid()))
"""


def test_process_isolation_from_a_script_without_main_guard(model_path: Path, tmp_path: Path) -> None:
    proc = _run_script(tmp_path, _NO_GUARD, str(model_path), name="no_guard.py")
    report = f"rc={proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-3000:]}"
    assert proc.returncode == 0, report
    assert proc.stdout.split() == ["384", "True"], report
    assert "Traceback" not in proc.stderr, report


def test_process_isolation_from_python_dash_c(model_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_NO_GUARD), str(model_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    report = f"rc={proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-3000:]}"
    assert proc.returncode == 0, report
    assert proc.stdout.split() == ["384", "True"], report
    assert "Traceback" not in proc.stderr, report


# ---------------------------------------------------------------------- 13. children dying while loading
def test_crash_retries_cover_a_child_killed_while_loading(model_path: Path) -> None:
    with EmbeddingEngine(cache_size=0) as eng:
        with _kill_first_model_child() as killed:
            eng.load_model(
                model_path=model_path, model_name="reload", isolation="process", n_workers=1, crash_retries=2
            )
        assert len(killed) == 1, "the killer never saw a child"
        backend = _backend(eng, "reload")
        assert backend.crashes == 1  # the kill landed while loading, and the load was retried
        pid = _child_pid(eng, "reload")
        assert pid != killed[0]
        assert _is_gone(killed[0])
        assert len(eng.embed("reload", "served by the retried child")) == DIMS


def test_child_killed_while_loading_without_retries_names_the_signal(model_path: Path) -> None:
    with EmbeddingEngine(cache_size=0) as eng:
        with _kill_first_model_child() as killed, pytest.raises(ModelLoadError) as info:
            eng.load_model(model_path=model_path, model_name="doomed", isolation="process", n_workers=1)
        assert len(killed) == 1
        message = str(info.value)
        assert "SIGKILL" in message and "while loading" in message and str(killed[0]) in message, message
        assert eng.models == {}


_FAILING_SITECUSTOMIZE = """
import os, sys
if os.environ.get("EMBELLAMA_TEST_CHILD_EXIT_1"):
    sys.stderr.write("boom from child\\n")
    sys.stderr.flush()
    os._exit(1)
"""


def test_child_exiting_with_status_1_is_a_load_error_with_its_stderr(
    model_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(textwrap.dedent(_FAILING_SITECUSTOMIZE))
    monkeypatch.setenv("PYTHONPATH", str(hooks))
    monkeypatch.setenv("EMBELLAMA_TEST_CHILD_EXIT_1", "1")
    before = _model_children()
    with EmbeddingEngine(cache_size=0) as eng:
        for attempt in range(3):  # the stderr tail must be there every time, not by luck of scheduling
            with pytest.raises(ModelLoadError) as info:
                eng.load_model(model_path=model_path, model_name=f"boom{attempt}", isolation="process", n_workers=1)
            message = str(info.value)
            assert "exited with status 1" in message, message
            assert "boom from child" in message, message
            assert "native crash" not in message and "killed by" not in message, message
        assert eng.models == {}
    assert _wait_until(lambda: _model_children() <= before, 10)
