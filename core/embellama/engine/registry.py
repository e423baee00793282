"""The model registry behind an engine: named models, their worker pools, sharing, reference counts and forks.

:class:`ModelRegistry` loads a model (blocking until its workers are ready), shares one loaded model among clients
that ask for the same file and options (:meth:`~ModelRegistry.acquire` / :meth:`~ModelRegistry.release` count
them), unloads models, and after ``os.fork()`` forgets the parent's workers so each model reloads on its next
request. It also owns the embedding cache its models' requests share, and it is what
:mod:`embellama.lifecycle` closes at exit and adopts after a fork.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from embellama import lifecycle
from embellama.config import EngineConfig, ModelConfig
from embellama.engine.cache import EmbeddingCache
from embellama.errors import ConfigurationError, EngineClosedError, ModelNotFoundError
from embellama.runtime.backends import backend_factory
from embellama.runtime.scheduler import WorkerPool
from embellama.texts import validate_text
from embellama.types import Job, JobResult, ModelHealth, ModelInfo

__all__ = ["ModelRegistry", "ServedModel", "in_thread"]

logger = logging.getLogger(__name__)


@dataclass
class ServedModel:
    """A registered model: its configuration and the pool serving it."""

    config: ModelConfig
    pool: WorkerPool
    users: int | None = None
    """Clients holding it through :meth:`ModelRegistry.acquire` (None: loaded explicitly, never auto-unloaded)."""

    @property
    def ready(self) -> bool:
        """Whether its workers are up and not stopping."""
        return self.pool.info is not None and not self.pool.stopping.is_set()

    @property
    def info(self) -> ModelInfo:
        """Metadata of the loaded model (only ever served once loaded)."""
        info = self.pool.info
        assert info is not None
        return info


def _stop_pools(models: dict[str, ServedModel]) -> None:
    """Finalizer of a registry dropped while open: ask its workers to stop (they unload on their own threads)."""
    for model in list(models.values()):
        model.pool.signal_stop()


def in_thread(fn: Callable[[], Any], name: str = "embellama-call") -> Future[Any]:
    """Run ``fn`` on a new daemon thread; the returned future gets its result (await it with ``wrap_future``).

    Used where a blocking registry step (a model load, joining workers) must not run on an event loop, without
    borrowing the loop's default executor.
    """
    future: Future[Any] = Future()

    def run() -> None:
        try:
            result = fn()
        except BaseException as exc:
            future.set_exception(exc)
        else:
            future.set_result(result)

    threading.Thread(target=run, name=name, daemon=True).start()
    return future


class ModelRegistry:
    """Named models of one engine, and the cache their requests share.

    Args:
        config: The engine's options (cache bounds, chunk size).
    """

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.cache = EmbeddingCache(config.cache_size, config.cache_bytes)
        """The embedding cache every model's requests share."""
        self._models: dict[str, ServedModel] = {}
        self._lock = threading.RLock()
        self._closed = False
        self._forked: dict[str, ModelConfig] = {}
        self._stuck: list[threading.Thread] = []
        lifecycle.track(self, functools.partial(_stop_pools, self._models))

    # ------------------------------------------------------------------ loading and sharing
    def load(self, config: ModelConfig, *, explicit: bool = True) -> ModelInfo:
        """Load ``config`` and register it under its name; blocks until its workers are ready.

        Args:
            config: The model's options.
            explicit: Loaded by the user (stays until unloaded); False: registered for clients, unloaded when the
                last one releases it.

        Raises:
            ConfigurationError: a model of that name is already registered (or loading).
            ModelNotFoundError, ModelLoadError: the file is missing or cannot be loaded.
            EngineClosedError: the registry was closed, or the name unloaded, while the model was loading.
        """
        with self._lock:
            self._check_open()
            existing = self._models.get(config.name)
            if existing is not None:
                state = "loaded" if existing.ready else "loading"
                raise ConfigurationError(f"a model named {config.name!r} is already {state}")
            model = ServedModel(config, _new_pool(config), users=None if explicit else 0)
            self._models[config.name] = model
        try:
            info = model.pool.start()
        except BaseException:
            with self._lock:
                if self._models.get(config.name) is model:
                    del self._models[config.name]
            raise
        with self._lock:
            if self._models.get(config.name) is model and not self._closed:
                logger.info(
                    "loaded model %r from %s (%.1f MB, %s, %d dims, limit %d tokens, pooling %s, %d x %d threads, %s)",
                    info.name,
                    info.path,
                    info.size_bytes / 1e6,
                    info.architecture,
                    info.dimensions,
                    info.max_tokens,
                    info.pooling,
                    info.n_workers,
                    info.n_threads,
                    info.isolation,
                )
                return info
        model.pool.stop()
        if self._closed:
            raise EngineClosedError(f"the engine was closed while model {config.name!r} was loading")
        raise EngineClosedError(f"model {config.name!r} was unloaded while it was loading")

    def ensure_model(self, config: ModelConfig) -> str:
        """Register ``config`` unless a model with the same file and options is loaded; return its name.

        This is how several adapters pointing at one model file share one loaded model.
        """
        with self._lock:
            self._check_open()
            for name, model in self._models.items():
                if model.config.replace(model_name=config.name) == config:
                    return name
            name, i = config.name, 1
            while name in self._models:
                i += 1
                name = f"{config.name}#{i}"
            config = config.replace(model_name=name)
        try:
            self.load(config, explicit=False)
        except ConfigurationError:
            with self._lock:  # another thread registered the same config meanwhile
                for existing, model in self._models.items():
                    if model.config.replace(model_name=config.name) == config:
                        return existing
            raise
        return name

    def acquire(self, config: ModelConfig) -> str:
        """:meth:`ensure_model`, counting the caller as a user; pair with :meth:`release`.

        A model first registered this way is unloaded when its last user releases it (adapters that change options
        in a notebook do not pile up models); one loaded with :meth:`load` stays until unloaded.
        """
        while True:
            name = self.ensure_model(config)
            with self._lock:
                model = self._models.get(name)
                if model is None:  # released and unloaded by another user meanwhile: register again
                    continue
                if model.users is not None:
                    model.users += 1
                return name

    def release(self, name: str) -> None:
        """Drop one user of a model taken with :meth:`acquire`; the last one unloads it (never raises)."""
        with self._lock:
            model = self._models.get(name)
            if model is None or model.users is None:
                return
            model.users -= 1
            if model.users > 0 or self._closed:
                return
            del self._models[name]
        logger.info("unloading model %r: no client uses it any more", name)
        model.pool.stop()

    def unload(self, name: str) -> None:
        """Stop the model's workers and free it; its queued requests fail with ``EngineClosedError``.

        Raises:
            ModelNotFoundError: no model of that name is loaded.
        """
        with self._lock:
            model = self._models.pop(name, None)
            self._forked.pop(name, None)
        if model is None:
            raise ModelNotFoundError(f"no model named {name!r} is loaded (loaded: {sorted(self._models)})")
        model.pool.stop()

    # ------------------------------------------------------------------ looking models up
    def serving(self, name: str) -> ServedModel:
        """The model serving ``name`` now (reloaded first in a forked child).

        Raises:
            EngineClosedError: the registry is closed.
            ModelNotFoundError: no model of that name is loaded, or it is still loading.
        """
        with self._lock:
            self._check_open()
            model = self._models.get(name)
            forked = self._forked.pop(name, None) if model is None else None
        if forked is not None:
            self.load(forked)
            return self.serving(name)
        if model is None:
            raise ModelNotFoundError(f"no model named {name!r} is loaded (loaded: {sorted(self._models)})")
        if model.pool.info is None:
            raise ModelNotFoundError(f"model {name!r} is still loading; wait for load_model() to return")
        return model

    @property
    def models(self) -> dict[str, ModelInfo]:
        """Loaded models by name."""
        with self._lock:
            return {name: m.pool.info for name, m in self._models.items() if m.pool.info is not None}

    def model_config(self, name: str) -> ModelConfig:
        """The configuration the model ``name`` was loaded with."""
        return self.serving(name).config

    def submit(self, name: str, texts: Sequence[str], *, collect_errors: bool = False) -> Future[JobResult]:
        """Low-level: queue ``texts`` as one job of model ``name`` (no cache, no chunking) and return its future.

        Raises:
            InvalidInputError: a text is not a ``str`` UTF-8 can encode (``collect_errors`` covers only errors
                found by the model, such as over-long texts).
        """
        job = Job([validate_text(t, i) for i, t in enumerate(texts)], collect_errors)
        self.serving(name).pool.put(job)
        return job.future

    def worker_pids(self, name: str) -> list[int | None]:
        """The process id serving each worker of model ``name`` (None while a crashed child awaits restart)."""
        return self.serving(name).pool.pids()

    def model_health(self, name: str, *, revive: bool = False) -> ModelHealth:
        """The state of each worker of model ``name``; ``revive`` restarts dead workers without waiting for a
        request."""
        model = self.serving(name)
        health = ModelHealth(name, tuple(model.pool.health()))
        if revive and health.live < len(health.workers):
            model.pool.revive()
        return health

    # ------------------------------------------------------------------ lifecycle
    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def names(self) -> list[str]:
        """Names of the registered models (loading ones included), sorted."""
        with self._lock:
            return sorted(self._models)

    def close(self, timeout: float | None = 30.0) -> None:
        """Unload every model and stop every worker (idempotent), waiting up to ``timeout`` seconds in all for the
        decodes they are running (a process-isolated worker still running then has its child killed)."""
        with self._lock:
            self._closed = True
            models = list(self._models.values())
            self._models.clear()
            self._forked.clear()
        for model in models:
            model.pool.signal_stop()
        deadline = None if timeout is None else time.monotonic() + timeout
        for model in models:
            model.pool.stop(None if deadline is None else max(0.0, deadline - time.monotonic()))
        self._stuck = [w for m in models for w in m.pool.join(0)]
        lifecycle.untrack(self)

    def running_threads(self) -> list[threading.Thread]:
        """Worker threads still inside a native call after :meth:`close` returned (normally none)."""
        return [t for t in self._stuck if t.is_alive()]

    def after_fork_in_child(self) -> None:
        """In a child made by ``os.fork()``: forget the parent's workers; each model reloads on its next request."""
        self._lock = threading.RLock()
        self.cache.after_fork_in_child()
        for name, model in self._models.items():
            model.pool.forget_after_fork()
            if model.pool.info is not None:
                self._forked[name] = model.config
        self._models.clear()
        self._stuck = []

    def _check_open(self) -> None:
        if self._closed:
            raise EngineClosedError("the engine is closed")


def _new_pool(config: ModelConfig) -> WorkerPool:
    return WorkerPool(config.name, config.n_workers, backend_factory(config), config.max_texts_per_decode)
