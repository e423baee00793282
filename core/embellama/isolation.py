"""Process isolation: a worker's model runs in a child process, so a native crash cannot take the caller down.

llama.cpp aborts (``GGML_ASSERT``) or faults on some inputs, builds and files; in-process, that kills the whole
host with no Python error. With ``ModelConfig(isolation="process")`` each worker thread owns a child process
(``multiprocessing`` *spawn* context: the parent has threads, so it never forks) that loads the model and serves
rounds of jobs sent over a pipe. If the child dies, the jobs it held get a
:class:`~embellama.errors.ModelCrashedError` naming the signal or exit code (or are retried on a fresh child,
``crash_retries`` times each), and the next request starts a fresh child. The parent never blocks on a dead
child: every wait watches the pipe *and* the process sentinel.

Like any spawn-based multiprocessing, a script that loads a model with process isolation at import time must
guard its entry point with ``if __name__ == "__main__":``.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import multiprocessing.util
import os
import signal
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any, NoReturn

from .config import ModelConfig
from .errors import EmbeddingError, ModelCrashedError, ModelLoadError
from .worker import Job, JobResult, ModelInfo, Payload, serve_round

__all__ = ["ProcessBackend"]

logger = logging.getLogger(__name__)

_STOP_TIMEOUT = 10.0
"""Seconds a child gets to unload and exit after a stop request before it is terminated."""


def _close_engines_before_multiprocessing_exit() -> None:  # pragma: no cover - runs at interpreter exit
    from .engine import _close_open_engines

    _close_open_engines()


# multiprocessing's own exit hook SIGTERMs daemonic children; atexit runs hooks last-registered-first, so this
# one (registered after importing multiprocessing.util) lets open engines finish their rounds and stop children
atexit.register(_close_engines_before_multiprocessing_exit)


class _ChildDied(Exception):
    """The child process is gone (internal; becomes ``ModelCrashedError`` or ``ModelLoadError``)."""

    def __init__(self, how: str) -> None:
        super().__init__(how)
        self.how = how


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "closed its pipe"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"was killed by {name}"
    return f"exited with code {code}"


class ProcessBackend:
    """A worker backend whose model lives in a child process (same interface as ``worker.ThreadBackend``).

    Attributes:
        crashes: How many times a child died while loading or serving.
    """

    def __init__(self, config: ModelConfig) -> None:
        self.config = config
        self.crashes = 0
        self._ctx = multiprocessing.get_context("spawn")
        self._process: BaseProcess | None = None
        self._conn: Connection | None = None

    @property
    def pid(self) -> int | None:
        """Process id of the live child serving the model, or None (for diagnostics and tests)."""
        proc = self._process
        return proc.pid if proc is not None and proc.is_alive() else None

    # ------------------------------------------------------------------ lifecycle
    def load(self) -> ModelInfo:
        """Start a child and load the model there.

        Raises:
            ModelNotFoundError, ModelLoadError, ConfigurationError: as ``EmbeddingModel.load`` (re-raised from the
                child), or ``ModelLoadError`` if the child died while loading (a native crash on load).
        """
        return self._start()

    def close(self) -> None:
        """Ask the child to unload and exit; terminate it if it does not (idempotent, never hangs)."""
        proc, conn = self._process, self._conn
        self._process = self._conn = None
        if conn is not None:
            with contextlib.suppress(OSError, ValueError):
                conn.send(("stop",))
        if proc is not None:
            proc.join(_STOP_TIMEOUT)
            if proc.is_alive():  # pragma: no cover - only when a child ignores the stop request
                proc.terminate()
                proc.join(_STOP_TIMEOUT)
            if proc.is_alive():  # pragma: no cover
                proc.kill()
                proc.join(_STOP_TIMEOUT)
            with contextlib.suppress(ValueError):
                proc.close()
        if conn is not None:
            conn.close()

    # ------------------------------------------------------------------ serving
    def serve(self, jobs: list[Job]) -> None:
        """Serve ``jobs`` in the child; a crash fails them with ``ModelCrashedError`` or retries them.

        The first attempt sends every job in one round. After a crash, jobs with retries left are re-sent one per
        round on a fresh child, so a job that crashes the model (a "poison" input) cannot keep failing the others.
        """
        pending, together = list(jobs), True
        while pending:
            retry: list[Job] = []
            for group in [pending] if together else [[j] for j in pending]:
                try:
                    if self._process is None:
                        self._start()
                    outcomes = self._request(("serve", [j.payload() for j in group]))
                except _ChildDied as died:
                    error = ModelCrashedError(
                        f"the worker process of model {self.config.name!r} {died.how} while serving this request"
                    )
                    for job in group:
                        if job.attempts < self.config.crash_retries:
                            job.attempts += 1
                            retry.append(job)
                        else:
                            job.future.set_exception(error)
                    continue
                for job, outcome in zip(group, outcomes, strict=True):
                    if isinstance(outcome, BaseException):
                        job.future.set_exception(outcome)
                    else:
                        job.future.set_result(outcome)
            if retry:
                logger.warning("retrying %d request(s) of model %r on a fresh worker", len(retry), self.config.name)
            pending, together = retry, False

    # ------------------------------------------------------------------ internals
    def _start(self) -> ModelInfo:
        self.close()
        parent_conn, child_conn = self._ctx.Pipe()
        proc = self._ctx.Process(
            target=_child_main, args=(child_conn, self.config), name=f"embellama-{self.config.name}", daemon=True
        )
        proc.start()
        child_conn.close()
        self._process, self._conn = proc, parent_conn
        try:
            status, value = self._receive()
        except _ChildDied as died:
            self.close()
            raise ModelLoadError(
                f"the worker process {died.how} while loading {self.config.model_path} (a native crash)"
            ) from None
        if status != "ok":
            self.close()
            raise value
        assert isinstance(value, ModelInfo)
        logger.info("model %r serves from process %s", self.config.name, proc.pid)
        return value

    def _request(self, message: tuple[Any, ...]) -> list[JobResult | BaseException]:
        assert self._conn is not None
        try:
            self._conn.send(message)
        except (OSError, ValueError):
            self._died()
        status, value = self._receive()
        if status != "ok":  # pragma: no cover - the child wraps every failure of a round into its outcomes
            raise value
        return list(value)

    def _receive(self) -> tuple[str, Any]:
        conn, proc = self._conn, self._process
        assert conn is not None and proc is not None
        ready = multiprocessing.connection.wait([conn, proc.sentinel])
        if conn in ready:
            try:
                message: tuple[str, Any] = conn.recv()
                return message
            except (EOFError, OSError):
                pass
        self._died()

    def _died(self) -> NoReturn:
        proc = self._process
        assert proc is not None
        proc.join(_STOP_TIMEOUT)
        how = _describe_exit(proc.exitcode)
        how = f"(pid {proc.pid}) {how}"
        self.crashes += 1
        logger.error("the worker process of model %r %s", self.config.name, how)
        self.close()
        raise _ChildDied(how)


# ---------------------------------------------------------------------- child side
class _NativeAbortProbe:
    """TEST HOOK, private: a job holding this makes the child trip a real ``GGML_ASSERT`` (process abort).

    The child decodes one sequence longer than ``n_ubatch``, which llama.cpp's encoder asserts against; the
    validation that normally prevents it is bypassed on purpose. Used by the isolation tests to produce a genuine
    native crash, not a Python stand-in.
    """


def _provoke_ggml_assert(model: Any) -> None:  # pragma: no cover - the process aborts inside
    import llama_cpp
    import numpy as np

    from . import _native

    n = model._budget + 1
    token = model.tokenize("a")[0]
    batch = _native.DecodeBatch(n, 1)
    batch.fill([np.full(n, token, dtype=np.int32)])
    llama_cpp.llama_decode(model._ctx, batch.batch)
    raise EmbeddingError("llama.cpp did not abort on an over-long batch")


def _child_main(conn: Connection, config: ModelConfig) -> None:
    """Entry point of the child: load the model, then serve rounds until told to stop or the parent goes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it stops us
    os.environ.setdefault("GGML_NO_BACKTRACE", "1")  # an abort must not stall attaching a debugger
    from .model import EmbeddingModel

    model = EmbeddingModel(config)
    try:
        info = ModelInfo.of(model.load())
    except BaseException as exc:  # re-raised in the parent
        _send(conn, ("error", exc))
        return
    try:
        _send(conn, ("ok", info))
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                break  # the parent is gone
            if message[0] != "serve":
                break
            payloads: list[Payload] = message[1]
            if any(isinstance(t, _NativeAbortProbe) for texts, _, _ in payloads for t in texts):
                _provoke_ggml_assert(model)
            _send(conn, ("ok", serve_round(model, payloads)))
    finally:
        model.unload()
        conn.close()


def _send(conn: Connection, message: tuple[str, Any]) -> None:
    """Send ``message``; an outcome that cannot be pickled is replaced by an ``EmbeddingError`` describing it."""
    try:
        conn.send(message)
    except (OSError, EOFError):  # pragma: no cover - the parent is gone
        return
    except Exception:  # pickling failed: send a description instead
        status, value = message
        if isinstance(value, list):
            value = [v if not isinstance(v, BaseException) else EmbeddingError(repr(v)) for v in value]
        else:
            value = EmbeddingError(repr(value))
        with contextlib.suppress(Exception):
            conn.send((status, value))
