"""Process isolation: a worker's model runs in a child process, so a native crash cannot take the caller down.

llama.cpp aborts (``GGML_ASSERT``) or faults on some inputs, builds and files; in-process, that kills the whole
host with no Python error. With ``ModelConfig(isolation="process")`` each worker thread owns a child process,
started as ``python -m embellama.runtime.child`` (a fresh interpreter: the user's ``__main__`` is never re-imported, so
no ``if __name__ == "__main__":`` guard is needed), talking pickled messages over a socket pair.

- A child that dies fails the jobs it held with :class:`~embellama.errors.ModelCrashedError` naming the signal or
  exit code and the child's last stderr lines, or retries them on a fresh child (``crash_retries`` times each,
  one job per child after a crash, so a "poison" input cannot keep failing the others). A child that dies while
  loading is retried the same way.
- A child that makes no progress (no finished decode) for ``request_timeout`` seconds is killed; its jobs fail
  with :class:`~embellama.errors.ModelTimeoutError` and the next request starts a fresh child.
- Every wait watches the socket with a deadline, so the parent never hangs on a dead or stopped child.
- No child is left a zombie: every kill (a timeout, a crash, ``close``) is followed by a bounded wait for the
  child's exit status, and a child that dies on its own, even while idle, is reaped by its stderr reader as soon as
  its stderr closes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from multiprocessing.connection import Connection
from pathlib import Path
from typing import IO, Any

from embellama.config import ModelConfig
from embellama.errors import ModelCrashedError, ModelLoadError, ModelTimeoutError
from embellama.types import Job, ModelInfo

__all__ = ["ProcessBackend", "describe_exit"]

logger = logging.getLogger(__name__)

STOP_TIMEOUT = 10.0
"""Seconds a child gets to unload and exit after a stop request before it is killed."""

REAP_TIMEOUT = 5.0
"""Seconds to wait for a killed child's exit status; one still not gone then (in uninterruptible sleep) is reaped
by its stderr reader when it finally exits."""

_STDERR_LINES = 20


def describe_exit(code: int | None) -> str:
    """Say how a child ended, from its exit status (negative: killed by that signal)."""
    if code is None:
        return "closed its connection"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"was killed by {name}"
    if code == 0:
        return "exited (status 0) without answering"
    return f"exited with status {code}"


class _ChildDied(Exception):
    """The child process is gone (internal; becomes ``ModelCrashedError`` or ``ModelLoadError``)."""


class _ChildStuck(Exception):
    """The child made no progress within the request timeout and was killed (internal)."""


class _Child:
    """One running child process: its socket, its stderr tail, and waits that never hang."""

    def __init__(self, config: ModelConfig) -> None:
        parent_sock, child_sock = socket.socketpair()
        env = dict(os.environ)
        package_root = str(Path(__file__).resolve().parents[2])  # the folder holding the embellama package
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "embellama.runtime.child", str(child_sock.fileno())],
                pass_fds=(child_sock.fileno(),),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                env=env,
                close_fds=True,
            )
        finally:
            child_sock.close()
        self.conn = Connection(parent_sock.detach())
        self.stderr: deque[str] = deque(maxlen=_STDERR_LINES)
        self.verbose = config.verbose
        assert self.process.stderr is not None
        threading.Thread(
            target=self._read_stderr, args=(self.process.stderr,), name=f"embellama-stderr-{self.pid}", daemon=True
        ).start()

    @property
    def pid(self) -> int:
        """The child's process id."""
        return self.process.pid

    def _read_stderr(self, stream: IO[bytes]) -> None:
        with contextlib.suppress(OSError, ValueError):
            for raw in stream:
                line = raw.decode("utf-8", errors="replace").rstrip()
                self.stderr.append(line)
                if self.verbose:
                    print(line, file=sys.stderr, flush=True)
                else:
                    logger.debug("[child %s] %s", self.pid, line)
        # stderr closes when the child exits: collect its status now, so a child that died while nobody was
        # waiting on it (a crash while idle) does not stay a zombie until the next request or close()
        with contextlib.suppress(OSError, ValueError):
            stream.close()
        with contextlib.suppress(OSError):
            self.process.wait()

    def send(self, message: tuple[Any, ...]) -> None:
        """Send ``message``; raise ``_ChildDied`` if the child is gone."""
        try:
            self.conn.send(message)
        except (OSError, ValueError, EOFError):
            raise _ChildDied(self.how_it_ended()) from None

    def receive(self, timeout: float | None) -> tuple[str, Any]:
        """The next answer (heartbeats restart the clock); ``_ChildDied`` / ``_ChildStuck`` otherwise."""
        while True:
            ready = self.conn.poll(timeout)
            if not ready:
                self.kill()
                raise _ChildStuck(f"made no progress for {timeout:g} s (pid {self.pid}) and was killed")
            try:
                message: tuple[str, Any] = self.conn.recv()
            except (EOFError, OSError):
                raise _ChildDied(self.how_it_ended()) from None
            if message[0] != "beat":
                return message

    def how_it_ended(self) -> str:
        """Describe the child's end, with the last lines it wrote to stderr."""
        try:
            code: int | None = self.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:  # pragma: no cover - the socket closed but the process lingers
            code = self.reap()
        time.sleep(0.05)  # let the stderr reader take the last lines
        how = f"(pid {self.pid}) {describe_exit(code)}"
        tail = [line for line in self.stderr if line.strip()][-5:]
        return how + (": " + " | ".join(tail) if tail else "")

    def kill(self) -> None:
        """Kill the child (works on a stopped one too); idempotent. Does not wait: see :meth:`reap`."""
        with contextlib.suppress(OSError):
            self.process.kill()

    def reap(self, timeout: float = REAP_TIMEOUT) -> int | None:
        """Kill the child and wait up to ``timeout`` seconds for its exit status, so no zombie is left.

        Returns:
            The exit status (``-9`` once killed), or None if the child is still not gone (then its stderr reader
            reaps it when it exits).
        """
        self.kill()
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            logger.warning("worker process %s did not exit within %g s of being killed", self.pid, timeout)
            return None

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Ask the child to unload and exit; kill and reap it if it does not within ``timeout`` seconds.

        Defaults to :data:`STOP_TIMEOUT`.
        """
        with contextlib.suppress(OSError, ValueError):
            self.conn.send(("stop",))
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.reap()
        self.conn.close()


class ProcessBackend:
    """A worker backend whose model lives in a child process (the :class:`~embellama.runtime.scheduler.Backend`
    contract).

    Attributes:
        crashes: How many times a child died (or was killed as stuck) while loading or serving.
        restarts: How many times a fresh child was started for a request after one was lost.
        last_error: What the last lost child's requests failed with (None before any loss).
    """

    def __init__(self, config: ModelConfig) -> None:
        self.config = config
        self.crashes = 0
        self.restarts = 0
        self.last_error: str | None = None
        self._child: _Child | None = None
        self._closing: _Child | None = None
        """A child being stopped: still reachable by :meth:`kill` (a stuck one would not answer the stop)."""
        self._lock = threading.Lock()

    @property
    def pid(self) -> int | None:
        """Process id of the live child serving the model, or None."""
        child = self._child
        return child.pid if child is not None and child.process.poll() is None else None

    # ------------------------------------------------------------------ lifecycle
    def load(self) -> ModelInfo:
        """Start a child and load the model there (a child dying while loading is retried ``crash_retries`` times).

        Raises:
            ModelNotFoundError, ModelLoadError, ConfigurationError: as ``EmbeddingModel.load`` (re-raised from the
                child), or ``ModelLoadError`` if every child died while loading.
        """
        for attempt in range(self.config.crash_retries + 1):
            try:
                return self._start()
            except (_ChildDied, _ChildStuck) as died:
                if attempt == self.config.crash_retries:
                    raise ModelLoadError(
                        f"the worker process of model {self.config.name!r} {died} while loading "
                        f"{self.config.model_path}"
                    ) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        """Ask the child to unload and exit; kill it if it does not (idempotent, never hangs)."""
        with self._lock:
            child, self._child = self._child, None
            self._closing = child
        if child is not None:
            try:
                child.stop()
            finally:
                self._closing = None

    def kill(self) -> None:
        """Kill the child now (from any thread): a wait on it then ends at once."""
        for child in (self._child, self._closing):
            if child is not None:
                child.kill()

    # ------------------------------------------------------------------ serving
    def serve(self, jobs: list[Job], *, lone: bool = False) -> None:
        """Serve ``jobs`` in the child; a crash fails them with ``ModelCrashedError`` or retries them.

        The first attempt sends every job in one round. After a crash, jobs with retries left are re-sent one per
        round on a fresh child, so a job that crashes the model cannot keep failing the others.
        """
        pending, together = list(jobs), True
        while pending:
            retry: list[Job] = []
            for group in [pending] if together else [[j] for j in pending]:
                try:
                    outcomes = self._round(group)
                except _ChildStuck as stuck:
                    error: Exception = ModelTimeoutError(
                        f"the worker process of model {self.config.name!r} {stuck}; it is restarted for the next "
                        "request (raise request_timeout for slower models)"
                    )
                    self.last_error = str(error)
                    for job in group:
                        job.future.set_exception(error)
                    continue
                except _ChildDied as died:
                    error = ModelCrashedError(
                        f"the worker process of model {self.config.name!r} {died} while serving this request"
                    )
                    self.last_error = str(error)
                    for job in group:
                        if job.attempts < self.config.crash_retries:
                            job.attempts += 1
                            retry.append(job)
                        else:
                            job.future.set_exception(error)
                    continue
                for job, outcome in zip(group, outcomes, strict=True):
                    job.resolve(outcome)
            if retry:
                logger.warning("retrying %d request(s) of model %r on a fresh worker", len(retry), self.config.name)
            pending, together = retry, False

    # ------------------------------------------------------------------ internals
    def _round(self, group: list[Job]) -> list[Any]:
        child = self._child or self._start_for_request()
        try:
            child.send(("serve", [j.payload() for j in group]))
            status, value = child.receive(self.config.request_timeout)
        except (_ChildDied, _ChildStuck):
            self._lost(child)
            raise
        if status != "ok":  # pragma: no cover - the child wraps every failure of a round into its outcomes
            raise value
        return list(value)

    def _start_for_request(self) -> _Child:
        """A fresh child for a request after a crash (dying while loading counts as a crash of the request)."""
        self.restarts += 1
        self._start()
        assert self._child is not None
        return self._child

    def _start(self) -> ModelInfo:
        self.close()
        try:
            child = _Child(self.config)
        except OSError as exc:
            raise ModelLoadError(_spawn_failure(self.config, exc)) from None
        try:
            child.send(("load", self.config))
            status, value = child.receive(self.config.request_timeout)
        except (_ChildDied, _ChildStuck):
            self._lost(child)
            raise
        if status != "ok":
            child.stop()
            raise value
        assert isinstance(value, ModelInfo)
        with self._lock:
            self._child = child
        logger.info("model %r serves from process %s", self.config.name, child.pid)
        return value

    def _lost(self, child: _Child) -> None:
        self.crashes += 1
        logger.error("the worker process of model %r (pid %s) is gone", self.config.name, child.pid)
        with self._lock:
            if self._child is child:
                self._child = None
        child.reap()
        with contextlib.suppress(OSError):
            child.conn.close()


def _spawn_failure(config: ModelConfig, exc: OSError) -> str:
    import errno

    if exc.errno in (errno.EMFILE, errno.ENFILE):
        return (
            f"cannot start a worker process for model {config.name!r}: too many open files ({exc.strerror}); "
            "raise the limit (ulimit -n) or close unused engines"
        )
    return f"cannot start a worker process for model {config.name!r}: {exc}"
