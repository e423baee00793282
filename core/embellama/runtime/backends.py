"""Where a worker's model instance lives: :class:`ThreadBackend` (in the worker thread) or, with
``isolation="process"``, :class:`~embellama.runtime.isolation.ProcessBackend` (in a child process).

:func:`backend_factory` gives the scheduler a factory for a model's configuration; the scheduler never looks
inside a backend.
"""

from __future__ import annotations

import os
import threading

from embellama.config import ModelConfig
from embellama.cpu import idle_cores
from embellama.model.contract import run_round
from embellama.model.embedding import EmbeddingModel
from embellama.runtime.isolation import ProcessBackend
from embellama.runtime.scheduler import Backend, BackendFactory
from embellama.types import Job, ModelInfo

__all__ = ["ThreadBackend", "backend_factory"]


class ThreadBackend:
    """The model instance lives in the worker thread itself.

    A native call cannot be interrupted from Python: ``kill`` does nothing here, ``request_timeout`` does not
    apply, and a stopping pool ends a round after its current decode. Use process isolation to bound a request.
    """

    def __init__(self, config: ModelConfig, stopping: threading.Event) -> None:
        self.config = config
        self.model = EmbeddingModel(config)
        self._stopping = stopping

    @property
    def pid(self) -> int:
        """This process."""
        return os.getpid()

    def load(self) -> ModelInfo:
        """Load the model on the calling (worker) thread."""
        return self.model.load().info()

    def serve(self, jobs: list[Job], *, lone: bool = False) -> None:
        """Serve one round in this thread; a lone small round borrows idle sibling cores (see :meth:`threads_for`)."""
        self.model.set_threads(self.threads_for(lone))
        outcomes = run_round(self.model, [j.payload() for j in jobs], should_stop=self._stopping.is_set)
        for job, outcome in zip(jobs, outcomes, strict=True):
            job.resolve(outcome)

    def threads_for(self, lone: bool) -> int:
        """Threads for the next round: this instance's own, or more for a lone small request.

        A lone query (nothing else queued, every sibling idle) borrows the idle siblings' cores, which lowers its
        latency (docs/performance.md, "Why the defaults"). Only cores nothing else is running on are borrowed,
        because llama.cpp's spinning threads collapse when another process takes a core they wait on; a busy pool never
        borrows, so throughput work keeps one thread per instance.
        """
        cfg = self.config
        own = cfg.threads
        if not lone or cfg.n_threads is not None or cfg.n_workers == 1:
            return own
        return max(own, min(own * cfg.n_workers, idle_cores()))

    def close(self) -> None:
        """Unload the model (on the worker thread)."""
        self.model.unload()

    def kill(self) -> None:
        """Nothing to do: an in-process native call cannot be interrupted."""


def backend_factory(config: ModelConfig) -> BackendFactory:
    """The factory a model's worker pool uses to make each worker's backend."""

    def make(stopping: threading.Event) -> Backend:
        if config.isolation == "process":
            return ProcessBackend(config)
        return ThreadBackend(config, stopping)

    return make
