"""``EmbeddingEngine``: a registry of named models with twin sync and async APIs over one core.

Every request becomes jobs on a model's queue, served by that model's worker thread(s) (see ``worker``). Sync
calls wait on ``concurrent.futures.Future``; async calls await the same futures with ``asyncio.wrap_future``,
so the event loop never blocks and the model is never called from another thread.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import queue
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from .cache import CacheStats, EmbeddingCache
from .config import EngineConfig, ModelConfig
from .errors import ConfigurationError, EngineClosedError, InvalidInputError, ModelNotFoundError
from .worker import Activity, Job, JobQueue, JobResult, ModelInfo, ModelWorker, _fail_pending

__all__ = ["BatchResult", "EmbeddingEngine", "Output", "ProgressCallback"]

logger = logging.getLogger(__name__)

Output = Literal["list", "numpy"]
OnError = Literal["raise", "collect"]
ProgressCallback = Callable[[int, int], None]
"""Called as ``progress(done, total)`` (texts) after each finished chunk of a batch, from a worker thread."""

_OPEN_ENGINES: weakref.WeakSet[EmbeddingEngine] = weakref.WeakSet()


@atexit.register
def _close_open_engines() -> None:  # pragma: no cover - runs at interpreter exit
    # Wait for decodes already inside llama.cpp: exiting while a worker thread decodes runs the C++ static
    # destructors under it (SIGSEGV, seen in test_lifecycle). Queued requests fail at once and an in-process round
    # stops after its current decode, so this is normally well under a second.
    for engine in list(_OPEN_ENGINES):
        engine.close(timeout=_EXIT_TIMEOUT)


_EXIT_TIMEOUT = 120.0
"""Seconds interpreter exit waits for a worker to finish the round it is decoding."""


@contextlib.contextmanager
def _single_text(text: object) -> Iterator[None]:
    """Validate a lone text and report its errors without a batch index (it has none)."""
    if not isinstance(text, str):
        raise InvalidInputError(f"expected str, got {type(text).__name__}")
    try:
        yield
    except InvalidInputError as exc:
        raise InvalidInputError(exc.reason, n_tokens=exc.n_tokens, limit=exc.limit, model_name=exc.model_name) from None


@dataclass
class BatchResult:
    """Result of ``embed_batch(..., on_error="collect")``: a vector per valid text, ``None`` per invalid one."""

    embeddings: list[Any]
    errors: dict[int, InvalidInputError] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Whether every text was embedded."""
        return not self.errors


class _ModelPool:
    """The workers and queue serving one registered model."""

    def __init__(self, config: ModelConfig) -> None:
        self.config = config
        self.jobs: queue.Queue[Any] = JobQueue()
        activity = Activity()
        self.workers = [ModelWorker(config, self.jobs, i, activity) for i in range(config.n_workers)]
        self.info: ModelInfo | None = None
        self._lock = threading.Lock()
        self.closed = False

    def put(self, job: Job) -> None:
        """Queue ``job``; once the pool is stopping it fails with ``EngineClosedError`` instead (never hangs)."""
        with self._lock:
            if not self.closed:
                self.jobs.put(job)
                return
        if job.future.set_running_or_notify_cancel():
            job.future.set_exception(EngineClosedError("the model was unloaded before this request was served"))

    def start(self) -> ModelInfo:
        for w in self.workers:
            w.start()
        try:
            infos = [w.loaded.result() for w in self.workers]
        except BaseException:
            self.stop()
            raise
        self.info = infos[0]
        return self.info

    def stop(self, timeout: float | None = 30.0) -> None:
        with self._lock:
            self.closed = True
        for w in self.workers:
            w.stopping.set()
        _fail_pending(self.jobs)
        ModelWorker.stop(self.jobs, len(self.workers))
        current = threading.current_thread()
        for w in self.workers:
            if w is not current and w.is_alive():
                w.join(timeout)


def _split(indices: list[int], n_workers: int, most: int, least: int) -> list[list[int]]:
    """Cut a request into equal chunks (sizes differ by at most one) of at most ``most`` texts.

    Frameworks send batches of 10-64 texts one after another: each must reach every worker, and evenly (200
    long texts as 64+64+64+8 would leave one worker with twice the work), so the chunk count is rounded up to a
    multiple of ``n_workers`` as long as chunks keep at least ``least`` texts (one decode's worth).
    """
    n = len(indices)
    if n == 0:
        return []
    needed = -(-n // most)
    shared = -(-needed // n_workers) * n_workers
    n_chunks = max(needed, min(shared, n // max(1, least)), 1)
    q, r = divmod(n, n_chunks)
    chunks, start = [], 0
    for k in range(n_chunks):
        size = q + (1 if k < r else 0)
        chunks.append(indices[start : start + size])
        start += size
    return chunks


@dataclass
class _Plan:
    """How one batch request is answered: cached rows, and chunks of the rest sent to the workers."""

    n: int
    dims: int
    rows: npt.NDArray[np.float32]
    missing: list[int]
    chunks: list[list[int]]
    keys: list[Any]
    texts: list[Any]
    errors: dict[int, InvalidInputError] = field(default_factory=dict)


class EmbeddingEngine:
    """Serve one or more named embedding models, from threads or asyncio, with a shared cache.

    Example:
        >>> with EmbeddingEngine() as engine:  # doctest: +SKIP
        ...     engine.load_model(ModelConfig(model_path="model.gguf", model_name="m"))
        ...     vector = engine.embed("m", "hello")
        ...     vectors = engine.embed_batch("m", ["a", "b"], output="numpy")
    """

    def __init__(self, config: EngineConfig | None = None, **options: Any) -> None:
        if config is not None and options:
            raise ConfigurationError("pass either an EngineConfig or keyword options, not both")
        self.config = config or EngineConfig(**options)
        self._pools: dict[str, _ModelPool] = {}
        self._lock = threading.RLock()
        self._closed = False
        self._cache = EmbeddingCache(self.config.cache_size)
        _OPEN_ENGINES.add(self)

    # ------------------------------------------------------------------ registry
    def load_model(self, config: ModelConfig | None = None, /, **options: Any) -> ModelInfo:
        """Load a model and register it under ``config.model_name``; blocks until its workers are ready.

        Raises:
            ConfigurationError: a model of that name is already registered, or the options are invalid.
            ModelNotFoundError, ModelLoadError: the file is missing or cannot be loaded.
        """
        if config is not None and options:
            raise ConfigurationError("pass either a ModelConfig or keyword options, not both")
        config = config or ModelConfig(**options)
        with self._lock:
            self._check_open()
            if config.name in self._pools:
                raise ConfigurationError(f"a model named {config.name!r} is already loaded")
            pool = _ModelPool(config)
            self._pools[config.name] = pool
        try:
            return pool.start()
        except BaseException:
            with self._lock:
                self._pools.pop(config.name, None)
            raise

    def ensure_model(self, config: ModelConfig) -> str:
        """Register ``config`` unless a model with the same file and options is loaded; return its name.

        This is how several adapters pointing at one model file share one loaded model.
        """
        with self._lock:
            self._check_open()
            for name, pool in self._pools.items():
                if pool.config.replace(model_name=config.name) == config:
                    return name
            name, i = config.name, 1
            while name in self._pools:
                i += 1
                name = f"{config.name}#{i}"
            config = config.replace(model_name=name)
        try:
            self.load_model(config)
        except ConfigurationError:
            with self._lock:  # another thread registered the same config meanwhile
                for existing, pool in self._pools.items():
                    if pool.config.replace(model_name=config.name) == config:
                        return existing
            raise
        return name

    def unload_model(self, name: str) -> None:
        """Stop the model's workers and free it; queued requests fail with ``EngineClosedError``."""
        with self._lock:
            pool = self._pools.pop(name, None)
        if pool is None:
            raise ModelNotFoundError(f"no model named {name!r} is loaded (loaded: {sorted(self._pools)})")
        pool.stop()

    @property
    def models(self) -> dict[str, ModelInfo]:
        """Loaded models by name."""
        with self._lock:
            return {name: pool.info for name, pool in self._pools.items() if pool.info is not None}

    def model_info(self, name: str) -> ModelInfo:
        """Metadata of the loaded model ``name``."""
        info = self._pool(name).info
        assert info is not None
        return info

    # ------------------------------------------------------------------ sync API
    def embed(self, name: str, text: str, *, output: Output = "list") -> Any:
        """Embed one text: a ``list[float]`` (or a 1-D array with ``output="numpy"``)."""
        with _single_text(text):
            return self.embed_batch(name, [text], output=output)[0]

    def embed_batch(
        self,
        name: str,
        texts: Iterable[str],
        *,
        output: Output = "list",
        progress: ProgressCallback | None = None,
        on_error: OnError = "raise",
    ) -> Any:
        """Embed many texts: one vector per text, in order (``[]`` for no texts).

        Args:
            name: A loaded model's name.
            texts: Any iterable of str (a generator is consumed once).
            output: ``"list"`` for ``list[list[float]]``, ``"numpy"`` for a 2-D float32 array.
            progress: Optional ``progress(done, total)`` callback.
            on_error: ``"raise"`` (default) raises the first ``InvalidInputError``; ``"collect"`` returns a
                :class:`BatchResult` with vectors for the valid texts and an error per invalid index.
        """
        plan = self._plan(name, texts, on_error)
        futures = self._submit(name, plan, on_error, progress)
        try:
            results = [f.result() for f in futures]
        except BaseException:
            for f in futures:
                f.cancel()
            raise
        return self._finish(plan, results, output, on_error)

    # ------------------------------------------------------------------ async API
    async def aembed(self, name: str, text: str, *, output: Output = "list") -> Any:
        """Async :meth:`embed`: awaits the model thread, never blocks the event loop."""
        with _single_text(text):
            return (await self.aembed_batch(name, [text], output=output))[0]

    async def aembed_batch(
        self,
        name: str,
        texts: Iterable[str],
        *,
        output: Output = "list",
        progress: ProgressCallback | None = None,
        on_error: OnError = "raise",
    ) -> Any:
        """Async :meth:`embed_batch`; cancelling the awaiting task drops its not-yet-started chunks."""
        plan = self._plan(name, texts, on_error)
        futures = self._submit(name, plan, on_error, progress)
        try:
            results = await asyncio.gather(*(asyncio.wrap_future(f) for f in futures))
        except BaseException:
            for f in futures:
                f.cancel()
            raise
        return self._finish(plan, list(results), output, on_error)

    def submit(self, name: str, texts: Sequence[str], *, collect_errors: bool = False) -> Future[JobResult]:
        """Low-level: queue ``texts`` as one job (no cache, no chunking) and return its future."""
        job = Job(list(texts), collect_errors)
        self._pool(name).put(job)
        return job.future

    def worker_pids(self, name: str) -> list[int | None]:
        """Diagnostics: the process id serving each worker of model ``name``.

        With ``isolation="process"`` these are the child processes (None while a crashed child awaits restart);
        otherwise every entry is this process's id.
        """
        return [w.pid for w in self._pool(name).workers]

    # ------------------------------------------------------------------ cache & lifecycle
    def cache_stats(self) -> CacheStats:
        """Hit/miss counters of the embedding cache."""
        return self._cache.stats()

    def clear_cache(self) -> None:
        """Empty the embedding cache."""
        self._cache.clear()

    @property
    def is_closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def close(self, timeout: float | None = 30.0) -> None:
        """Unload every model and stop every worker (idempotent). Queued requests get ``EngineClosedError``."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            pools = list(self._pools.values())
            self._pools.clear()
        for pool in pools:
            pool.stop(timeout)
        _OPEN_ENGINES.discard(self)

    async def aclose(self) -> None:
        """Async :meth:`close` (joins the workers off the event loop)."""
        await asyncio.get_running_loop().run_in_executor(None, self.close)

    def __enter__(self) -> EmbeddingEngine:
        self._check_open()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    async def __aenter__(self) -> EmbeddingEngine:
        self._check_open()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"models={sorted(self._pools)}"
        return f"<EmbeddingEngine {state}>"

    # ------------------------------------------------------------------ internals
    def _check_open(self) -> None:
        if self._closed:
            raise EngineClosedError("the engine is closed")

    def _pool(self, name: str) -> _ModelPool:
        with self._lock:
            self._check_open()
            pool = self._pools.get(name)
            if pool is None or pool.info is None:
                raise ModelNotFoundError(f"no model named {name!r} is loaded (loaded: {sorted(self._pools)})")
            return pool

    def _plan(self, name: str, texts: Iterable[str], on_error: OnError) -> _Plan:
        if isinstance(texts, (str, bytes)):
            raise InvalidInputError(f"expected a sequence of texts, got a single {type(texts).__name__}")
        if texts is None:
            raise InvalidInputError("expected a sequence of texts, got None")
        if on_error not in ("raise", "collect"):
            raise ConfigurationError(f"on_error must be 'raise' or 'collect', got {on_error!r}")
        pool = self._pool(name)
        assert pool.info is not None
        items = list(texts)
        options = pool.config.output_options()
        dims = pool.info.dimensions
        rows = np.empty((len(items), dims), dtype=np.float32)
        missing: list[int] = []
        keys: list[Any] = [None] * len(items)
        for i, text in enumerate(items):
            if isinstance(text, str):
                keys[i] = (pool.info.fingerprint, options, text)
                hit = self._cache.get(keys[i])
                if hit is not None:
                    rows[i] = hit
                    continue
            missing.append(i)
        chunks = _split(missing, pool.config.n_workers, self.config.chunk_size, pool.config.max_texts_per_decode)
        return _Plan(len(items), dims, rows, missing, chunks, keys, items)

    def _submit(
        self, name: str, plan: _Plan, on_error: OnError, progress: ProgressCallback | None
    ) -> list[Future[JobResult]]:
        pool = self._pool(name)
        futures: list[Future[JobResult]] = []
        done = [plan.n - len(plan.missing)]
        lock = threading.Lock()
        for chunk in plan.chunks:
            job = Job([plan.texts[i] for i in chunk], on_error == "collect", indices=chunk)
            if progress is not None:

                def report(_: Future[JobResult], n: int = len(chunk)) -> None:
                    with lock:
                        done[0] += n
                        current = done[0]
                    progress(current, plan.n)

                job.future.add_done_callback(report)
            futures.append(job.future)
            pool.put(job)
        if progress is not None and not plan.chunks:
            progress(plan.n, plan.n)
        return futures

    def _finish(self, plan: _Plan, results: list[JobResult], output: Output, on_error: OnError) -> Any:
        for chunk, result in zip(plan.chunks, results, strict=False):
            plan.rows[chunk] = result.vectors
            for local, err in result.errors.items():
                plan.errors[chunk[local]] = err
            for local, i in enumerate(chunk):
                if local not in result.errors and plan.keys[i] is not None:
                    self._cache.put(plan.keys[i], plan.rows[i])
        if output == "numpy":
            vectors: Any = plan.rows
        elif output == "list":
            vectors = plan.rows.tolist()
        else:
            raise ConfigurationError(f"output must be 'list' or 'numpy', got {output!r}")
        if on_error == "collect":
            embeddings = [None if i in plan.errors else vectors[i] for i in range(plan.n)]
            return BatchResult(embeddings, dict(sorted(plan.errors.items())))
        return vectors
