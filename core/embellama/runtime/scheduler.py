"""The scheduler: a queue per model, worker threads that each own one backend, coalescing, and stopping.

It knows nothing about models: a pool is given a factory that makes a :class:`Backend` (one model instance, in
its worker thread or in a child process) and hands it rounds of jobs. Workers of one pool share a queue; a worker
takes a job, then drains what else is waiting, up to one decode's worth of texts (leaving the rest to idle
siblings), so concurrent requests share decodes. Cancelled futures are skipped.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, Protocol

from embellama.errors import EngineClosedError
from embellama.types import Job, ModelInfo, WorkerHealth

__all__ = ["COALESCE_TEXTS", "Backend", "BackendFactory", "JobQueue", "WorkerPool"]

logger = logging.getLogger(__name__)

COALESCE_TEXTS = 256
"""Most texts one worker round takes from the queue (together with the pool's ``round_texts``)."""


class Backend(Protocol):
    """One model instance, used by exactly one worker thread for its whole life."""

    @property
    def pid(self) -> int | None:
        """Process serving the instance (None while a child awaits restart)."""

    def load(self) -> ModelInfo:
        """Load the model; raise a typed error if it cannot be loaded."""

    def serve(self, jobs: list[Job], *, lone: bool) -> None:
        """Serve one round and resolve every job's future. ``lone``: nothing else is queued or running."""

    def close(self) -> None:
        """Unload (on the worker thread; idempotent)."""

    def kill(self) -> None:
        """Force a stuck instance to stop (any thread). A no-op where the instance cannot be interrupted."""


BackendFactory = Callable[[threading.Event], Backend]
"""Makes a worker's backend; the event is set when the pool stops (an in-process round then ends early)."""


class JobQueue:
    """The queue a model's workers share: FIFO for jobs, newest-waiter-first for workers.

    Handing the next job to the worker that started waiting last (the one that just finished) keeps one warm
    llama.cpp thread team serving a stream of lone queries, instead of alternating with a sibling whose threads
    may still be spinning down. Each waiting worker has its own event, so no private ``threading`` state is used.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: collections.deque[Any] = collections.deque()
        self._waiters: list[threading.Event] = []
        self._events = threading.local()  # one reusable event per waiting thread

    def put(self, item: Any) -> None:
        """Append ``item`` and wake the newest waiting worker, if any."""
        with self._lock:
            self._items.append(item)
            if self._waiters:
                self._waiters.pop().set()

    def get(self, timeout: float | None = None) -> Any:
        """Take the oldest item, waiting up to ``timeout`` seconds (None: forever); ``queue.Empty`` on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                if self._items:
                    return self._items.popleft()
                waiter = self._event()
                self._waiters.append(waiter)
            remaining = None if deadline is None else deadline - time.monotonic()
            if (remaining is not None and remaining <= 0) or not waiter.wait(remaining):
                with self._lock:
                    if waiter in self._waiters:
                        self._waiters.remove(waiter)
                        if not self._items:
                            raise queue.Empty
                    # woken (or an item arrived) just as the wait ended: take it on the next pass

    def _event(self) -> threading.Event:
        event: threading.Event | None = getattr(self._events, "event", None)
        if event is None:
            event = self._events.event = threading.Event()
        event.clear()
        return event

    def get_nowait(self) -> Any:
        """Take the oldest item or raise ``queue.Empty``."""
        with self._lock:
            if self._items:
                return self._items.popleft()
        raise queue.Empty

    def empty(self) -> bool:
        """Whether no item is queued."""
        return not self._items

    def waiting(self) -> int:
        """How many workers are waiting for an item."""
        with self._lock:
            return len(self._waiters)


_STOP = object()


def _fail(future: Future[Any], message: str) -> None:
    if future.set_running_or_notify_cancel():
        future.set_exception(EngineClosedError(message))


class _Worker(threading.Thread):
    """A daemon thread that owns one backend for its whole life."""

    def __init__(self, pool: WorkerPool, index: int) -> None:
        super().__init__(name=f"embellama-{pool.name}-{index}", daemon=True)
        self.pool = pool
        self.loaded: Future[ModelInfo] = Future()
        self.backend: Backend | None = None

    def run(self) -> None:
        pool = self.pool
        try:
            backend = pool.factory(pool.stopping)
            self.backend = backend
            self.loaded.set_result(backend.load())
        except BaseException as exc:
            self.loaded.set_exception(exc)
            return
        try:
            while self._serve_one_round(backend):
                pass
        finally:
            backend.close()
            pool.fail_pending()

    def _serve_one_round(self, backend: Backend) -> bool:
        pool = self.pool
        job = pool.jobs.get()
        if job is _STOP:
            return False
        round_, n_texts, stop_after = [job], len(job.texts), False
        # take what fills one decode: a greedy worker would starve its idle siblings
        while n_texts < min(COALESCE_TEXTS, pool.round_texts):
            try:
                more = pool.jobs.get_nowait()
            except queue.Empty:
                break
            if more is _STOP:
                stop_after = True
                break
            round_.append(more)
            n_texts += len(more.texts)
        live = [j for j in round_ if j.future.set_running_or_notify_cancel()]
        if live:
            with pool.busy() as others_busy:
                lone = not others_busy and n_texts <= pool.round_texts and pool.jobs.empty()
                try:
                    backend.serve(live, lone=lone)
                except BaseException as exc:  # a backend resolves its jobs; anything it could not is failed here
                    for j in live:
                        if not j.future.done():
                            j.future.set_exception(exc)
        return not stop_after


class WorkerPool:
    """The workers and queue serving one model.

    Args:
        name: Model name (thread names, messages).
        n_workers: Worker threads, each owning one backend.
        factory: Makes each worker's backend, on that worker's thread.
        round_texts: One decode's worth of texts: a worker coalesces waiting jobs up to this many.
    """

    def __init__(self, name: str, n_workers: int, factory: BackendFactory, round_texts: int) -> None:
        self.name = name
        self.factory = factory
        self.round_texts = round_texts
        self.jobs: JobQueue = JobQueue()
        self.stopping = threading.Event()
        self.workers = [_Worker(self, i) for i in range(n_workers)]
        self.info: ModelInfo | None = None
        self._lock = threading.Lock()
        self._busy = 0
        self._revivals: list[Future[Any]] = []

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> ModelInfo:
        """Start the workers and wait until each has loaded its instance; stop them all if one fails."""
        for w in self.workers:
            w.start()
        try:
            infos = [w.loaded.result() for w in self.workers]
        except BaseException:
            self.stop()
            raise
        self.info = infos[0]
        return self.info

    def signal_stop(self) -> None:
        """Refuse new jobs, fail queued ones, and ask every worker to exit after its current decode."""
        with self._lock:
            if self.stopping.is_set():
                return
            self.stopping.set()
        self.fail_pending()
        for _ in self.workers:
            self.jobs.put(_STOP)

    def join(self, timeout: float | None) -> list[threading.Thread]:
        """Wait up to ``timeout`` seconds in all for the workers; return those still running."""
        current = threading.current_thread()
        deadline = None if timeout is None else time.monotonic() + timeout
        for w in self.workers:
            if w is not current and w.is_alive():
                w.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return [w for w in self.workers if w is not current and w.is_alive()]

    def stop(self, timeout: float | None = 30.0) -> None:
        """Stop the workers; those that do not stop within ``timeout`` have their backend killed.

        Killing stops a child process at once. An in-process decode cannot be interrupted: its worker exits when
        the decode returns.
        """
        self.signal_stop()
        stuck = self.join(timeout)
        for w in stuck:
            backend = getattr(w, "backend", None)
            if backend is not None:
                logger.warning("model %r: worker %s did not stop in time; killing it", self.name, w.name)
                backend.kill()
        if stuck:
            self.join(5.0)

    def forget_after_fork(self) -> None:
        """In a forked child: the workers do not exist here. Mark the pool stopped without touching them."""
        self.stopping.set()
        self.workers = []

    # ------------------------------------------------------------------ jobs
    def put(self, job: Job) -> None:
        """Queue ``job``; once the pool is stopping it fails with ``EngineClosedError`` instead (never hangs)."""
        with self._lock:
            if not self.stopping.is_set():
                self.jobs.put(job)
                return
        _fail(job.future, f"the model {self.name!r} was unloaded before this request was served")

    def fail_pending(self) -> None:
        """Fail jobs still queued; stop signals meant for the workers are put back."""
        stops = 0
        while True:
            try:
                job = self.jobs.get_nowait()
            except queue.Empty:
                break
            if job is _STOP:
                stops += 1
            else:
                _fail(job.future, f"the model {self.name!r} was unloaded before this request was served")
        for _ in range(stops):
            self.jobs.put(_STOP)

    @contextlib.contextmanager
    def busy(self) -> Any:
        """Count a worker as serving a round; yields whether another worker is serving one too."""
        with self._lock:
            self._busy += 1
            others = self._busy > 1
        try:
            yield others
        finally:
            with self._lock:
                self._busy -= 1

    def health(self) -> list[WorkerHealth]:
        """Each worker's state: its process, whether it can serve now, and its backend's crash counters."""
        out = []
        for w in self.workers:
            backend = w.backend
            pid = backend.pid if backend is not None else None
            out.append(
                WorkerHealth(
                    pid=pid,
                    alive=pid is not None and w.is_alive() and not self.stopping.is_set(),
                    crashes=int(getattr(backend, "crashes", 0)),
                    restarts=int(getattr(backend, "restarts", 0)),
                    last_error=getattr(backend, "last_error", None),
                )
            )
        return out

    def revive(self) -> None:
        """Queue a check-only job per dead worker: a lost child process is noticed, then restarted, without waiting
        for a client's request (a readiness probe that takes a server out of rotation would otherwise wait
        forever)."""
        if any(not f.done() for f in self._revivals):
            return  # one nudge at a time, however often a probe asks
        self._revivals = []
        for health in self.health():
            if not health.alive and not self.stopping.is_set():
                job = Job([""], check_only=True)
                self._revivals.append(job.future)
                self.put(job)

    def pids(self) -> list[int | None]:
        """Process serving each worker's instance (None while unknown)."""
        return [w.backend.pid if w.backend is not None else None for w in self.workers]
