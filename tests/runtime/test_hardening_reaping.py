"""No zombie worker processes: a process-isolated child is reaped after every kill — a request timeout, a crash
(SIGKILL, mid-request or while idle) and ``close()``.

Everything is real: the default model in real child processes, real SIGSTOP and SIGKILL. A zombie is a process
that exited but whose parent never collected its status; it still has a ``/proc`` entry (state ``Z``), which is
what these tests look for. Every wait is bounded.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import psutil
import pytest

from embellama import EmbeddingEngine, ModelCrashedError, ModelTimeoutError

pytestmark = pytest.mark.timeout(300)

DIMS = 384


def _state(pid: int) -> str | None:
    """The process's state (``"zombie"``, ``"running"``, ...), or None once it is gone and reaped."""
    try:
        return str(psutil.Process(pid).status())
    except psutil.NoSuchProcess:
        return None


def _reaped_within(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _state(pid) is None:
            return True
        time.sleep(0.05)
    return _state(pid) is None


def _engine(model_path: Path, name: str, **options: Any) -> EmbeddingEngine:
    engine = EmbeddingEngine(cache_size=0)
    engine.load_model(model_path=model_path, model_name=name, isolation="process", n_workers=1, **options)
    return engine


def _pid(engine: EmbeddingEngine, name: str) -> int:
    (pid,) = engine.worker_pids(name)
    assert pid is not None and pid != os.getpid()
    return pid


def test_a_timed_out_child_is_reaped(model_path: Path) -> None:
    """Before: the killed child stayed a zombie until the engine was garbage-collected."""
    engine = _engine(model_path, "stuck", request_timeout=10)
    try:
        assert len(engine.embed("stuck", "before")) == DIMS
        pid = _pid(engine, "stuck")
        os.kill(pid, signal.SIGSTOP)
        with pytest.raises(ModelTimeoutError):
            engine.embed("stuck", "sent to a stopped child")
        assert _reaped_within(pid, 3), f"timed-out child {pid} is {_state(pid)}"
        assert len(engine.embed("stuck", "served by a fresh child")) == DIMS
        assert _pid(engine, "stuck") != pid
    finally:
        engine.close(timeout=5)


def test_a_child_killed_while_idle_is_reaped_without_a_request(model_path: Path) -> None:
    engine = _engine(model_path, "idle", crash_retries=1)  # the first request after the crash meets the dead child
    try:
        assert len(engine.embed("idle", "before")) == DIMS
        pid = _pid(engine, "idle")
        os.kill(pid, signal.SIGKILL)
        assert _reaped_within(pid, 5), f"crashed idle child {pid} is {_state(pid)}"
        assert len(engine.embed("idle", "served after the crash")) == DIMS
    finally:
        engine.close(timeout=5)


def test_a_child_killed_mid_request_is_reaped(model_path: Path) -> None:
    engine = _engine(model_path, "busy", crash_retries=0)
    try:
        pid = _pid(engine, "busy")
        started = threading.Event()
        result: Future[Any] = Future()

        def run() -> None:
            try:
                texts = [f"a long batch text number {i} that keeps the child busy" for i in range(400)]
                result.set_result(engine.embed_batch("busy", texts, progress=lambda done, total: started.set()))
            except BaseException as exc:  # handed to the test
                result.set_exception(exc)

        threading.Thread(target=run, daemon=True).start()
        assert started.wait(120), "the batch never made progress"
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(ModelCrashedError):
            result.result(timeout=60)
        assert _reaped_within(pid, 3), f"crashed child {pid} is {_state(pid)}"
    finally:
        engine.close(timeout=5)


@pytest.mark.parametrize("stopped", [False, True], ids=["healthy", "sigstopped"])
def test_close_reaps_the_child_within_its_timeout(model_path: Path, stopped: bool) -> None:
    engine = _engine(model_path, "closing", request_timeout=10)
    assert len(engine.embed("closing", "before close")) == DIMS
    pid = _pid(engine, "closing")
    if stopped:
        os.kill(pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        engine.close(timeout=2)
        elapsed = time.monotonic() - t0
        assert elapsed < 2 + 5 + 2, elapsed  # the timeout, then at most the reap wait
        assert _reaped_within(pid, 1.0), f"close() returned after {elapsed:.1f} s with child {pid} {_state(pid)}"
    finally:
        if _state(pid) not in (None, "zombie"):
            os.kill(pid, signal.SIGKILL)
