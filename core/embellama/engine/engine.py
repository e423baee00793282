"""``EmbeddingEngine``: a registry of named models with twin sync and async APIs over one request path.

A request is planned once (:mod:`embellama.engine.planning`: validation, cache, even chunks), its chunks become jobs on
the serving model's :class:`~embellama.runtime.scheduler.WorkerPool`, and the answer is assembled from their results.
The model is looked up once per request, so a request is answered — and cached — by the model that planned it,
even if the name is unloaded and reloaded meanwhile. Sync calls wait on ``concurrent.futures.Future`` s; async
calls await the same futures with ``asyncio.wrap_future`` and plan and assemble in slices, so the event loop never
blocks and a model is only ever called from its own thread.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, overload

import numpy as np
import numpy.typing as npt

from embellama import lifecycle
from embellama.config import EngineConfig, ModelConfig
from embellama.engine.cache import CacheStats, EmbeddingCache
from embellama.engine.planning import OnError, Output, Plan, Steps, assemble, checked_tokens, drive, plan_request, split
from embellama.engine.truncation import call_offset, one_report_per_call, report_truncation
from embellama.engine.waiting import Progress, ProgressCallback, adrive, await_jobs, in_thread, wait_jobs
from embellama.errors import ConfigurationError, EngineClosedError, InvalidInputError, ModelNotFoundError
from embellama.runtime.backends import backend_factory
from embellama.runtime.scheduler import WorkerPool
from embellama.texts import validate_prompt, validate_text
from embellama.types import BatchResult, Item, Job, JobResult, ModelHealth, ModelInfo, RankedDocument, Reranking

__all__ = [
    "BatchResult",
    "EmbeddingEngine",
    "Output",
    "ProgressCallback",
    "call_offset",  # re-exported from truncation / waiting for the adapters
    "in_thread",
    "one_report_per_call",
]

logger = logging.getLogger(__name__)

_NO_CACHE = EmbeddingCache(0)

_MAX_SPECIAL_TOKENS = 8
"""More special tokens than any tokenizer adds around a text (BOS/CLS, EOS/SEP, ...)."""

FloatArray = npt.NDArray[np.float32]


@dataclass
class _Model:
    """A registered model: its configuration and the pool serving it."""

    config: ModelConfig
    pool: WorkerPool
    users: int | None = None
    """Clients holding it through :meth:`EmbeddingEngine.acquire` (None: loaded explicitly, never auto-unloaded)."""

    @property
    def ready(self) -> bool:
        return self.pool.info is not None and not self.pool.stopping.is_set()


def _prompt(info: ModelInfo, prompt: str | None, prompt_name: str | None) -> str:
    """The text put in front of every input: ``prompt``, else the model's prompt named ``prompt_name``; checked
    like an input and bounded in size (see :func:`~embellama.texts.validate_prompt`)."""
    if prompt is not None:
        if not isinstance(prompt, str):
            raise ConfigurationError(f"prompt must be a string, got {prompt!r}")
    elif prompt_name is None:
        return ""
    elif prompt_name not in info.prompts:
        raise ConfigurationError(
            f"model {info.name!r} has no prompt named {prompt_name!r}; its prompts: {sorted(info.prompts)} "
            "(set ModelConfig(prompts=...) or pass prompt=...)"
        )
    else:
        prompt = info.prompts[prompt_name]
    return validate_prompt(prompt, limit=info.max_tokens, model_name=info.name) if prompt else ""


def _utf8_length(item: Item) -> int:
    return len(item.encode("utf-8")) if isinstance(item, str) else sum(len(t.encode("utf-8")) for t in item)


def _documents(documents: Iterable[str]) -> list[str]:
    if documents is None or isinstance(documents, (str, bytes)):
        raise InvalidInputError(f"expected a sequence of documents, got {type(documents).__name__}")
    return list(documents)


def _reranking(rows: FloatArray, documents: list[str], top_n: int | None, normalize: bool) -> Reranking:
    if top_n is not None and (isinstance(top_n, bool) or not isinstance(top_n, int) or top_n < 1):
        raise ConfigurationError(f"top_n must be an integer >= 1 or None, got {top_n!r}")
    raw = rows[:, 0].astype(np.float64) if len(rows) else np.zeros(0)
    values = [float(x) for x in (1.0 / (1.0 + np.exp(-raw)) if normalize else raw)]
    order = sorted(range(len(values)), key=lambda i: -values[i])[:top_n]
    return Reranking(values, [RankedDocument(i, values[i], documents[i]) for i in order])


def _stop_pools(models: dict[str, _Model]) -> None:
    """Finalizer of an engine dropped while open: ask its workers to stop (they unload on their own threads)."""
    for model in list(models.values()):
        model.pool.signal_stop()


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
        self._models: dict[str, _Model] = {}
        self._lock = threading.RLock()
        self._closed = False
        self._cache = EmbeddingCache(self.config.cache_size, self.config.cache_bytes)
        self._forked: dict[str, ModelConfig] = {}
        self._stuck: list[threading.Thread] = []
        lifecycle.track(self, functools.partial(_stop_pools, self._models))

    # ------------------------------------------------------------------ registry
    def load_model(self, config: ModelConfig | None = None, /, **options: Any) -> ModelInfo:
        """Load a model and register it under ``config.model_name``; blocks until its workers are ready.

        Raises:
            ConfigurationError: a model of that name is already registered (or loading), or the options are
                invalid.
            ModelNotFoundError, ModelLoadError: the file is missing or cannot be loaded.
            EngineClosedError: the engine was closed, or the name unloaded, while the model was loading.
        """
        if config is not None and options:
            raise ConfigurationError("pass either a ModelConfig or keyword options, not both")
        config = config or ModelConfig(**options)
        return self._load(config, explicit=True)

    def _load(self, config: ModelConfig, *, explicit: bool) -> ModelInfo:
        with self._lock:
            self._check_open()
            existing = self._models.get(config.name)
            if existing is not None:
                state = "loaded" if existing.ready else "loading"
                raise ConfigurationError(f"a model named {config.name!r} is already {state}")
            model = _Model(config, self._new_pool(config), users=None if explicit else 0)
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
            self._load(config, explicit=False)
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
        in a notebook do not pile up models); one loaded with :meth:`load_model` stays until unloaded.
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

    def unload_model(self, name: str) -> None:
        """Stop the model's workers and free it; its queued requests fail with ``EngineClosedError``."""
        with self._lock:
            model = self._models.pop(name, None)
            self._forked.pop(name, None)
        if model is None:
            raise ModelNotFoundError(f"no model named {name!r} is loaded (loaded: {sorted(self._models)})")
        model.pool.stop()

    @property
    def models(self) -> dict[str, ModelInfo]:
        """Loaded models by name."""
        with self._lock:
            return {name: m.pool.info for name, m in self._models.items() if m.pool.info is not None}

    def model_config(self, name: str) -> ModelConfig:
        """The configuration the model ``name`` was loaded with."""
        return self._serving(name).config

    def model_info(self, name: str) -> ModelInfo:
        """Metadata of the loaded model ``name``."""
        info = self._serving(name).pool.info
        assert info is not None
        return info

    # ------------------------------------------------------------------ sync API
    @overload
    def embed(
        self,
        name: str,
        text: str,
        *,
        output: Literal["list"] = ...,
        prompt: str | None = ...,
        prompt_name: str | None = ...,
    ) -> list[float]: ...
    @overload
    def embed(
        self,
        name: str,
        text: str,
        *,
        output: Literal["numpy"],
        prompt: str | None = ...,
        prompt_name: str | None = ...,
    ) -> FloatArray: ...

    def embed(
        self,
        name: str,
        text: str,
        *,
        output: Output = "list",
        prompt: str | None = None,
        prompt_name: str | None = None,
    ) -> Any:
        """Embed one text: a ``list[float]`` (or a 1-D array with ``output="numpy"``).

        Args:
            name: A loaded model's name.
            text: The text.
            output: ``"list"`` or ``"numpy"``.
            prompt: Put in front of the text (e.g. ``"query: "``). Defaults to none.
            prompt_name: Use the model's named prompt (``"query"``, ``"document"``, ...; see
                ``ModelInfo.prompts``) when ``prompt`` is not given. Defaults to none.
        """
        model = self._serving(name)
        plan = drive(self._plan(model, [text], "raise", single=True, prompt=prompt, prompt_name=prompt_name))
        return self._run(model, plan, output, None)[0]

    @overload
    def embed_batch(
        self,
        name: str,
        texts: Iterable[str],
        *,
        output: Literal["list"] = ...,
        progress: ProgressCallback | None = ...,
        on_error: Literal["raise"] = ...,
        prompt: str | None = ...,
        prompt_name: str | None = ...,
    ) -> list[list[float]]: ...
    @overload
    def embed_batch(
        self,
        name: str,
        texts: Iterable[str],
        *,
        output: Literal["numpy"],
        progress: ProgressCallback | None = ...,
        on_error: Literal["raise"] = ...,
        prompt: str | None = ...,
        prompt_name: str | None = ...,
    ) -> FloatArray: ...
    @overload
    def embed_batch(
        self,
        name: str,
        texts: Iterable[str],
        *,
        output: Output = ...,
        progress: ProgressCallback | None = ...,
        on_error: Literal["collect"],
        prompt: str | None = ...,
        prompt_name: str | None = ...,
    ) -> BatchResult: ...

    def embed_batch(
        self,
        name: str,
        texts: Iterable[str],
        *,
        output: Output = "list",
        progress: ProgressCallback | None = None,
        on_error: OnError = "raise",
        prompt: str | None = None,
        prompt_name: str | None = None,
    ) -> Any:
        """Embed many texts: one vector per text, in order (``[]`` for no texts).

        Args:
            name: A loaded model's name.
            texts: Any iterable of str (a generator is consumed once).
            output: ``"list"`` for ``list[list[float]]``, ``"numpy"`` for a 2-D float32 array.
            progress: Optional ``progress(done, total)`` callback, called in this thread as texts finish.
            on_error: ``"raise"`` (default) raises the first ``InvalidInputError``; ``"collect"`` returns a
                :class:`BatchResult` with vectors for the valid texts and an error per invalid index.
            prompt: Put in front of every text (e.g. ``"passage: "``). Defaults to none.
            prompt_name: Use the model's named prompt (``"query"``, ``"document"``, ...; see
                ``ModelInfo.prompts``) when ``prompt`` is not given. Defaults to none.
        """
        model = self._serving(name)
        plan = drive(self._plan(model, texts, on_error, prompt=prompt, prompt_name=prompt_name))
        return self._run(model, plan, output, progress)

    # ------------------------------------------------------------------ async API
    @overload
    async def aembed(
        self,
        name: str,
        text: str,
        *,
        output: Literal["list"] = ...,
        prompt: str | None = ...,
        prompt_name: str | None = ...,
    ) -> list[float]: ...
    @overload
    async def aembed(
        self,
        name: str,
        text: str,
        *,
        output: Literal["numpy"],
        prompt: str | None = ...,
        prompt_name: str | None = ...,
    ) -> FloatArray: ...

    async def aembed(
        self,
        name: str,
        text: str,
        *,
        output: Output = "list",
        prompt: str | None = None,
        prompt_name: str | None = None,
    ) -> Any:
        """Async :meth:`embed`: awaits the model thread, never blocks the event loop."""
        model = self._serving(name)
        plan = await adrive(self._plan(model, [text], "raise", single=True, prompt=prompt, prompt_name=prompt_name))
        return (await self._arun(model, plan, output, None))[0]

    @overload
    async def aembed_batch(
        self,
        name: str,
        texts: Iterable[str],
        *,
        output: Literal["list"] = ...,
        progress: ProgressCallback | None = ...,
        on_error: Literal["raise"] = ...,
        prompt: str | None = ...,
        prompt_name: str | None = ...,
    ) -> list[list[float]]: ...
    @overload
    async def aembed_batch(
        self,
        name: str,
        texts: Iterable[str],
        *,
        output: Literal["numpy"],
        progress: ProgressCallback | None = ...,
        on_error: Literal["raise"] = ...,
        prompt: str | None = ...,
        prompt_name: str | None = ...,
    ) -> FloatArray: ...
    @overload
    async def aembed_batch(
        self,
        name: str,
        texts: Iterable[str],
        *,
        output: Output = ...,
        progress: ProgressCallback | None = ...,
        on_error: Literal["collect"],
        prompt: str | None = ...,
        prompt_name: str | None = ...,
    ) -> BatchResult: ...

    async def aembed_batch(
        self,
        name: str,
        texts: Iterable[str],
        *,
        output: Output = "list",
        progress: ProgressCallback | None = None,
        on_error: OnError = "raise",
        prompt: str | None = None,
        prompt_name: str | None = None,
    ) -> Any:
        """Async :meth:`embed_batch`; cancelling the awaiting task drops its not-yet-started chunks.

        Planning and the answer are built in slices between which the event loop runs. For very large batches
        (tens of thousands of texts) prefer ``output="numpy"``: a list answer creates one Python list per text,
        and the garbage collector's pauses over them can stall the loop for 100 ms or more.
        """
        model = self._serving(name)
        plan = await adrive(self._plan(model, texts, on_error, prompt=prompt, prompt_name=prompt_name))
        return await self._arun(model, plan, output, progress)

    # ------------------------------------------------------------------ reranking
    def rerank(
        self,
        name: str,
        query: str,
        documents: Iterable[str],
        *,
        top_n: int | None = None,
        normalize: bool = False,
    ) -> Reranking:
        """Score every document against ``query`` with a reranker (cross-encoder), many pairs per decode.

        Args:
            name: A loaded reranker's name (``ModelInfo.kind == "reranker"``).
            query: The query (never cut).
            documents: The texts to score; an over-long pair loses the end of its document with
                ``long_text_mode="truncate"`` (or ``"mean"``), else raises ``InvalidInputError`` naming the
                document's index and token counts.
            top_n: How many documents ``Reranking.top`` keeps (by descending score). Defaults to all.
            normalize: Map single-logit scores through a sigmoid to 0..1. Defaults to False (raw head output).

        Returns:
            :class:`~embellama.types.Reranking`: ``scores`` in document order and ``top`` sorted by score.
        """
        model = self._serving(name)
        documents = _documents(documents)
        plan = drive(self._plan_pairs(model, query, documents))
        rows = self._run(model, plan, "numpy", None)
        return _reranking(rows, documents, top_n, normalize)

    async def arerank(
        self,
        name: str,
        query: str,
        documents: Iterable[str],
        *,
        top_n: int | None = None,
        normalize: bool = False,
    ) -> Reranking:
        """Async :meth:`rerank`: awaits the model thread, never blocks the event loop."""
        model = self._serving(name)
        documents = _documents(documents)
        plan = await adrive(self._plan_pairs(model, query, documents))
        rows = await self._arun(model, plan, "numpy", None)
        return _reranking(rows, documents, top_n, normalize)

    async def aembed_with_usage(
        self,
        name: str,
        texts: Iterable[str],
        *,
        prompt: str | None = None,
        prompt_name: str | None = None,
    ) -> tuple[FloatArray, int]:
        """:meth:`aembed_batch` (numpy output) and the request's token count, from the same pass (a server's
        ``usage``; answers from the cache count the tokens remembered with them)."""
        model = self._serving(name)
        plan = await adrive(self._plan(model, texts, "raise", prompt=prompt, prompt_name=prompt_name))
        rows = await self._arun(model, plan, "numpy", None)
        return rows, plan.tokens

    def count_tokens(
        self, name: str, texts: Iterable[str], *, prompt: str | None = None, prompt_name: str | None = None
    ) -> int:
        """Tokens the model sees for ``texts`` (special tokens and ``prompt`` included, before any cut).

        Tokenizes on the model's workers (no decode); raises ``InvalidInputError`` as embedding would.
        """
        model = self._serving(name)
        plan = drive(self._plan(model, texts, "raise", prompt=prompt, prompt_name=prompt_name, cached=False))
        return checked_tokens(plan, plan.chunks, wait_jobs(self._submit(model, plan, check_only=True), None))

    async def acount_tokens(
        self, name: str, texts: Iterable[str], *, prompt: str | None = None, prompt_name: str | None = None
    ) -> int:
        """Async :meth:`count_tokens`."""
        model = self._serving(name)
        plan = await adrive(self._plan(model, texts, "raise", prompt=prompt, prompt_name=prompt_name, cached=False))
        results = await await_jobs(self._submit(model, plan, check_only=True), None)
        return checked_tokens(plan, plan.chunks, results)

    def submit(self, name: str, texts: Sequence[str], *, collect_errors: bool = False) -> Future[JobResult]:
        """Low-level: queue ``texts`` as one job (no cache, no chunking) and return its future.

        Raises:
            InvalidInputError: a text is not a ``str`` UTF-8 can encode (``collect_errors`` covers only errors
                found by the model, such as over-long texts).
        """
        job = Job([validate_text(t, i) for i, t in enumerate(texts)], collect_errors)
        self._serving(name).pool.put(job)
        return job.future

    def worker_pids(self, name: str) -> list[int | None]:
        """Diagnostics: the process id serving each worker of model ``name``.

        With ``isolation="process"`` these are the child processes (None while a crashed child awaits restart);
        otherwise every entry is this process's id.
        """
        return self._serving(name).pool.pids()

    def model_health(self, name: str, *, revive: bool = False) -> ModelHealth:
        """Diagnostics: the state of each worker of model ``name`` (live or not, crashes, restarts, last error).

        Args:
            name: A loaded model's name.
            revive: Queue a check-only request for each dead worker, so a lost child process is restarted without
                waiting for a client's request. Defaults to False.
        """
        model = self._serving(name)
        health = ModelHealth(name, tuple(model.pool.health()))
        if revive and health.live < len(health.workers):
            model.pool.revive()
        return health

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
        """Unload every model and stop every worker (idempotent). Queued requests get ``EngineClosedError``.

        Args:
            timeout: Seconds to wait in all for workers to finish the decode they are running. A process-isolated
                worker still running then has its child killed; an in-process decode cannot be interrupted and
                its worker exits when the decode returns. Defaults to 30.
        """
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

    async def aclose(self) -> None:
        """Async :meth:`close`: joins the workers on a helper thread, not on the event loop."""
        await asyncio.wrap_future(in_thread(self.close, "embellama-aclose"))

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
        state = "closed" if self._closed else f"models={sorted(self._models)}"
        return f"<EmbeddingEngine {state}>"

    def __copy__(self) -> EmbeddingEngine:
        return self  # an engine is a service: copies of objects that use it share it

    def __deepcopy__(self, memo: dict[int, Any]) -> EmbeddingEngine:
        return self

    def __reduce__(self) -> Any:
        raise TypeError(
            "an EmbeddingEngine holds threads and native models and cannot be pickled; objects sent to other "
            "processes should name a model_path (they then use that process's shared engine)"
        )

    def after_fork_in_child(self) -> None:
        """In a child made by ``os.fork()``: forget the parent's workers; each model reloads on its next request."""
        self._lock = threading.RLock()
        self._cache.after_fork_in_child()
        for name, model in self._models.items():
            model.pool.forget_after_fork()
            if model.pool.info is not None:
                self._forked[name] = model.config
        self._models.clear()
        self._stuck = []

    # ------------------------------------------------------------------ internals
    def _check_open(self) -> None:
        if self._closed:
            raise EngineClosedError("the engine is closed")

    def _new_pool(self, config: ModelConfig) -> WorkerPool:
        return WorkerPool(config.name, config.n_workers, backend_factory(config), config.max_texts_per_decode)

    def _serving(self, name: str) -> _Model:
        """The model serving ``name`` now (reloaded first in a forked child)."""
        with self._lock:
            self._check_open()
            model = self._models.get(name)
            forked = self._forked.pop(name, None) if model is None else None
        if forked is not None:
            self.load_model(forked)
            return self._serving(name)
        if model is None:
            raise ModelNotFoundError(f"no model named {name!r} is loaded (loaded: {sorted(self._models)})")
        if model.pool.info is None:
            raise ModelNotFoundError(f"model {name!r} is still loading; wait for load_model() to return")
        return model

    def _plan(
        self,
        model: _Model,
        texts: Iterable[str],
        on_error: OnError,
        *,
        single: bool = False,
        prompt: str | None = None,
        prompt_name: str | None = None,
        cached: bool = True,
    ) -> Steps:
        info = model.pool.info
        assert info is not None
        if info.kind == "reranker":
            raise ConfigurationError(
                f"model {info.name!r} is a reranker: score (query, document) pairs with rerank(), not embed()"
            )
        return plan_request(
            texts,
            identity=(info.fingerprint, model.config.output_options(), model.config.normalization, model.config.norm_p),
            dims=info.dimensions,
            cache=self._cache if cached else _NO_CACHE,
            on_error=on_error,
            n_workers=model.config.n_workers,
            most=self.config.chunk_size,
            least=model.config.max_texts_per_decode,
            single=single,
            prompt=_prompt(info, prompt, prompt_name),
        )

    def _plan_pairs(self, model: _Model, query: str, documents: list[str]) -> Steps:
        info = model.pool.info
        assert info is not None
        if info.kind != "reranker":
            raise ConfigurationError(
                f"model {info.name!r} is an embedding model; rerank() needs a reranker (a GGUF with a "
                "classification head, or pooling='rank')"
            )
        query = validate_prompt(query, limit=info.max_tokens, model_name=info.name, subject="query")
        return plan_request(
            documents,
            identity=(info.fingerprint, model.config.output_options(), model.config.normalization, model.config.norm_p),
            dims=info.dimensions,
            cache=self._cache,
            on_error="raise",
            n_workers=model.config.n_workers,
            most=self.config.chunk_size,
            least=model.config.max_texts_per_decode,
            pair_with=query,
        )

    def _submit(
        self, model: _Model, plan: Plan, chunks: list[list[int]] | None = None, *, check_only: bool = False
    ) -> list[Future[JobResult]]:
        futures = []
        for chunk in plan.chunks if chunks is None else chunks:
            texts = [plan.texts[i] for i in chunk]
            job = Job(texts, plan.collect, plan.job_indices(chunk), check_only=check_only, prompt=plan.prompt)
            futures.append(job.future)
            model.pool.put(job)
        return futures

    @staticmethod
    def _report(model: _Model, plan: Plan) -> None:
        info = model.pool.info
        report_truncation(plan, model.config.name, info.max_tokens if info is not None else 0)

    def _to_check(self, model: _Model, plan: Plan) -> list[list[int]]:
        """Strict mode checks a whole request before embedding any of it (``long_text_mode="raise"``,
        ``on_error="raise"``, several jobs: one job is always checked whole before its first decode). Only texts that
        might exceed the limit are tokenized for it: no tokenizer yields more tokens than UTF-8 bytes, plus the
        special tokens."""
        info = model.pool.info
        if model.config.long_text_mode != "raise" or plan.collect or len(plan.chunks) < 2 or info is None:
            return []
        fits = info.max_tokens - _MAX_SPECIAL_TOKENS - len(plan.prompt.encode("utf-8"))
        suspects = [i for chunk in plan.chunks for i in chunk if _utf8_length(plan.texts[i]) > fits]
        return split(suspects, model.config.n_workers, self.config.chunk_size, model.config.max_texts_per_decode)

    def _run(self, model: _Model, plan: Plan, output: Output, progress: ProgressCallback | None) -> Any:
        check = self._to_check(model, plan)
        if check:
            wait_jobs(self._submit(model, plan, check, check_only=True), None)
        futures = self._submit(model, plan)
        results = wait_jobs(futures, Progress(plan, futures, progress))
        answer = drive(assemble(plan, results, output, self._cache))
        self._report(model, plan)
        return answer

    async def _arun(self, model: _Model, plan: Plan, output: Output, progress: ProgressCallback | None) -> Any:
        check = self._to_check(model, plan)
        if check:
            await await_jobs(self._submit(model, plan, check, check_only=True), None)
        futures = self._submit(model, plan)
        results = await await_jobs(futures, Progress(plan, futures, progress))
        answer = await adrive(assemble(plan, results, output, self._cache))
        self._report(model, plan)
        return answer
