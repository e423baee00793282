"""The model threads: each creates, owns and frees one ``EmbeddingModel``; callers only see futures.

Workers of one model share a queue. A worker takes a job, then drains whatever else is waiting (up to one
decode's worth of texts, leaving the rest to idle siblings) so concurrent requests share decodes. Cancelled
futures are skipped.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from .config import ModelConfig, usable_cores
from .errors import EngineClosedError, InvalidInputError
from .model import EmbeddingModel

__all__ = ["COALESCE_TEXTS", "Job", "JobResult", "ModelInfo", "ModelWorker", "serve_round"]

logger = logging.getLogger(__name__)

COALESCE_TEXTS = 256
"""Most texts one worker round takes from the queue."""


@dataclass(frozen=True)
class ModelInfo:
    """What a loaded model is, as the engine reports it."""

    name: str
    path: str
    architecture: str
    dimensions: int
    native_dimensions: int
    max_tokens: int
    pooling: str
    model_pooling: str | None
    normalize: bool
    size_bytes: int
    fingerprint: str
    n_workers: int
    n_threads: int
    isolation: str

    @classmethod
    def of(cls, model: EmbeddingModel) -> ModelInfo:
        """Describe a loaded ``model``."""
        cfg = model.config
        return cls(
            name=cfg.name,
            path=str(cfg.model_path),
            architecture=model.architecture,
            dimensions=model.embedding_dimensions,
            native_dimensions=model.native_dimensions,
            max_tokens=model.max_sequence_length,
            pooling=model.pooling.value,
            model_pooling=model.model_pooling.value if model.model_pooling else None,
            normalize=cfg.normalize,
            size_bytes=model.model_size,
            fingerprint=model.fingerprint,
            n_workers=cfg.n_workers,
            n_threads=cfg.threads,
            isolation=cfg.isolation,
        )


@dataclass
class JobResult:
    """Vectors for the valid texts of a job (NaN rows where a text was invalid) and the per-index errors."""

    vectors: npt.NDArray[np.float32]
    errors: dict[int, InvalidInputError] = field(default_factory=dict)


@dataclass
class Job:
    """Texts to embed and the future that receives a :class:`JobResult`."""

    texts: list[Any]
    collect_errors: bool = False
    indices: list[int] | None = None
    """The caller's index of each text (errors name it); defaults to the position in ``texts``."""
    future: Future[JobResult] = field(default_factory=Future)
    attempts: int = 0

    def payload(self) -> tuple[list[Any], bool, list[int] | None]:
        """What :func:`serve_round` needs of this job (picklable, for process isolation)."""
        return self.texts, self.collect_errors, self.indices


Payload = tuple[list[Any], bool, "list[int] | None"]


def serve_round(
    model: EmbeddingModel, payloads: list[Payload], should_stop: Callable[[], bool] | None = None
) -> list[JobResult | BaseException]:
    """Embed several jobs' texts in shared decodes.

    A job whose texts include an invalid one gets that ``InvalidInputError`` (naming the caller's index)
    unless it collects errors, in which case its valid texts are embedded and the errors returned beside them,
    keyed by position in the job.
    """
    outcomes: list[JobResult | BaseException] = []
    sequences: list[npt.NDArray[np.int32]] = []
    slots: list[tuple[int, list[int]]] = []  # (outcome index, rows of its valid texts)
    for texts, collect, indices in payloads:
        errors: dict[int, InvalidInputError] = {}
        prepared: list[tuple[int, npt.NDArray[np.int32]]] = []
        for i, text in enumerate(texts):
            try:
                prepared.append((i, model.prepare(text, i if indices is None else indices[i])))
            except InvalidInputError as exc:
                errors[i] = exc
                if not collect:
                    break
        if errors and not collect:
            outcomes.append(next(iter(errors.values())))
            continue
        vectors = np.full((len(texts), model.embedding_dimensions), np.nan, dtype=np.float32)
        outcomes.append(JobResult(vectors, errors))
        slots.append((len(outcomes) - 1, [i for i, _ in prepared]))
        sequences.extend(tokens for _, tokens in prepared)
    if sequences:
        try:
            rows = model.embed_tokens(sequences, should_stop=should_stop)
        except Exception as exc:
            return [exc if isinstance(o, JobResult) else o for o in outcomes]
        start = 0
        for slot, indices in slots:
            result = outcomes[slot]
            assert isinstance(result, JobResult)
            result.vectors[indices] = rows[start : start + len(indices)]
            start += len(indices)
    return outcomes


class Backend(Protocol):
    """Where a worker's model lives: in its own thread, or in a child process."""

    def load(self) -> ModelInfo: ...
    def serve(self, jobs: list[Job]) -> None: ...
    def close(self) -> None: ...


class ThreadBackend:
    """The model lives in the worker thread itself."""

    def __init__(
        self,
        config: ModelConfig,
        stopping: threading.Event | None = None,
        threads_for: Callable[[int], int] | None = None,
    ) -> None:
        self.model = EmbeddingModel(config)
        self._stopping = stopping or threading.Event()
        self._threads_for = threads_for

    def load(self) -> ModelInfo:
        return ModelInfo.of(self.model.load())

    def serve(self, jobs: list[Job]) -> None:
        if self._threads_for is not None:
            self.model.set_threads(self._threads_for(sum(len(j.texts) for j in jobs)))
        outcomes = serve_round(self.model, [j.payload() for j in jobs], self._stopping.is_set)
        for job, outcome in zip(jobs, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                job.future.set_exception(outcome)
            else:
                job.future.set_result(outcome)

    def close(self) -> None:
        self.model.unload()


def idle_cores() -> int:
    """Usable cores that no other process is running on right now, at least 0.

    Counts runnable tasks system-wide (``/proc/loadavg``, instantaneous: a 1-minute average would lag behind a
    process that just started) minus this process's own runnable threads (the caller, and llama.cpp threads still
    spinning after a decode). Off Linux it returns 0, so nothing is ever borrowed.
    """
    try:
        with open("/proc/loadavg") as f:
            running = int(f.read().split()[3].split("/")[0])
        own = 0
        for stat in os.scandir("/proc/self/task"):
            try:
                with open(os.path.join(stat.path, "stat")) as f:
                    text = f.read()
            except OSError:  # pragma: no cover - the thread exited meanwhile
                continue
            own += text[text.rindex(")") + 2] == "R"
    except (OSError, ValueError, IndexError):  # pragma: no cover - not Linux
        return 0
    return max(0, usable_cores() - max(0, running - own))


class _NewestWaiterFirst(threading.Condition):
    """A condition whose ``notify`` wakes the thread that started waiting last (CPython wakes the first).

    Handing the next job to the worker that just finished keeps one warm llama.cpp thread team serving a stream
    of lone queries, instead of alternating with a sibling whose threads may still be spinning down.
    """

    def notify(self, n: int = 1) -> None:
        waiters = self._waiters  # type: ignore[attr-defined]
        while waiters and n > 0:
            waiter = waiters.pop()
            with contextlib.suppress(RuntimeError):
                waiter.release()
                n -= 1


class JobQueue(queue.Queue[Any]):
    """The queue a model's workers share: FIFO for jobs, newest-waiter-first for workers."""

    def __init__(self) -> None:
        super().__init__()
        self.not_empty = _NewestWaiterFirst(self.mutex)


class Activity:
    """How many workers of one pool are serving a round right now (entered around each round)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.busy = 0

    def __enter__(self) -> Activity:
        with self._lock:
            self.busy += 1
        return self

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self.busy -= 1


_STOP = object()


class ModelWorker(threading.Thread):
    """A daemon thread that owns one backend (one model instance) for its whole life."""

    def __init__(
        self, config: ModelConfig, jobs: queue.Queue[Any], index: int = 0, activity: Activity | None = None
    ) -> None:
        super().__init__(name=f"embellama-{config.name}-{index}", daemon=True)
        self.config = config
        self.jobs = jobs
        self.activity = activity or Activity()
        self.loaded: Future[ModelInfo] = Future()
        self.stopping = threading.Event()
        """Set when the worker's pool stops: an in-process round then ends after its current decode."""
        self._backend: Backend | None = None

    @property
    def pid(self) -> int | None:
        """Process id serving this worker's model: its child's with process isolation, else this process's."""
        backend = self._backend
        if backend is None:
            return None
        if isinstance(backend, ThreadBackend):
            return os.getpid()
        pid: int | None = getattr(backend, "pid", None)
        return pid

    def _make_backend(self) -> Backend:
        if self.config.isolation == "process":
            from .isolation import ProcessBackend

            return ProcessBackend(self.config)
        return ThreadBackend(self.config, self.stopping, self._threads_for)

    def _threads_for(self, n_texts: int) -> int:
        """Threads for the round about to run: this instance's own, or more for a lone small request.

        A lone query (nothing else queued, every sibling idle) borrows the idle siblings' cores: on 2 cores its
        latency drops from ~5 ms to ~3.4 ms. Only cores nothing else is running on are borrowed, because
        llama.cpp's spinning threads collapse when another process takes a core they wait on; a busy pool never
        borrows, so throughput work keeps one thread per instance.
        """
        cfg = self.config
        own = cfg.threads
        if (
            cfg.n_threads is not None
            or cfg.n_workers == 1
            or n_texts > cfg.max_texts_per_decode
            or self.activity.busy != 1
            or not self.jobs.empty()
        ):
            return own
        return max(own, min(own * cfg.n_workers, idle_cores()))

    def run(self) -> None:
        try:
            backend = self._make_backend()
            self.loaded.set_result(backend.load())
        except BaseException as exc:
            self.loaded.set_exception(exc)
            return
        self._backend = backend
        try:
            while True:
                job = self.jobs.get()
                if job is _STOP:
                    break
                round_ = [job]
                n_texts = len(job.texts)
                stop_after = False
                # take what fills one decode: a greedy worker would starve its idle siblings
                while n_texts < min(COALESCE_TEXTS, self.config.max_texts_per_decode):
                    try:
                        more = self.jobs.get_nowait()
                    except queue.Empty:
                        break
                    if more is _STOP:
                        stop_after = True
                        break
                    round_.append(more)
                    n_texts += len(more.texts)
                live = [j for j in round_ if j.future.set_running_or_notify_cancel()]
                if live:
                    try:
                        with self.activity:
                            backend.serve(live)
                    except BaseException as exc:
                        for j in live:
                            if not j.future.done():
                                j.future.set_exception(exc)
                if stop_after:
                    break
        finally:
            backend.close()
            _fail_pending(self.jobs)

    @staticmethod
    def stop(jobs: queue.Queue[Any], n_workers: int) -> None:
        """Ask ``n_workers`` workers reading ``jobs`` to finish what they hold and exit."""
        for _ in range(n_workers):
            jobs.put(_STOP)


def _fail_pending(jobs: queue.Queue[Any]) -> None:
    """Fail jobs still queued after a worker left; stop signals meant for its siblings are put back."""
    stops = 0
    while True:
        try:
            job = jobs.get_nowait()
        except queue.Empty:
            break
        if job is _STOP:
            stops += 1
        elif job.future.set_running_or_notify_cancel():
            job.future.set_exception(EngineClosedError("the model was unloaded before this request was served"))
    for _ in range(stops):
        jobs.put(_STOP)
