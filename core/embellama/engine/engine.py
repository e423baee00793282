"""``EmbeddingEngine``: named embedding models served from threads or asyncio, with a shared cache.

The engine is the public face: twin sync and async methods, each one line over two pieces below it. The model
registry (:mod:`embellama.engine.registry`) loads, shares, reference-counts and unloads models and re-creates their
workers after a fork; a request (:mod:`embellama.engine.request`) plans, checks, submits, waits, assembles and
reports — the same steps for both twins, which differ only in how the request is driven (waiting on futures in the
caller's thread, or awaiting them on the event loop). A call therefore goes down and never climbs back up here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from types import TracebackType
from typing import Any, Literal, overload

import numpy as np
import numpy.typing as npt

from embellama.config import EngineConfig, ModelConfig
from embellama.engine.cache import CacheStats
from embellama.engine.planning import OnError, Output
from embellama.engine.registry import ModelRegistry, in_thread
from embellama.engine.request import ProgressCallback, Request
from embellama.errors import ConfigurationError, EngineClosedError
from embellama.types import BatchResult, ModelHealth, ModelInfo, Reranking

__all__ = ["EmbeddingEngine"]

FloatArray = npt.NDArray[np.float32]


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
        self._registry = ModelRegistry(self.config)

    @property
    def registry(self) -> ModelRegistry:
        """The models behind the engine, for code built on it (clients sharing models with ``acquire`` /
        ``release``, low-level ``submit``, diagnostics such as ``running_threads``)."""
        return self._registry

    # ------------------------------------------------------------------ models
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
        return self._registry.load(config or ModelConfig(**options))

    def unload_model(self, name: str) -> None:
        """Stop the model's workers and free it; its queued requests fail with ``EngineClosedError``."""
        self._registry.unload(name)

    @property
    def models(self) -> dict[str, ModelInfo]:
        """Loaded models by name."""
        return self._registry.models

    def model_info(self, name: str) -> ModelInfo:
        """Metadata of the loaded model ``name``."""
        return self._registry.serving(name).info

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
        return Request.embeddings(
            self._registry, name, [text], output=output, single=True, prompt=prompt, prompt_name=prompt_name
        ).run()

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
        request = Request.embeddings(
            self._registry,
            name,
            texts,
            output=output,
            progress=progress,
            on_error=on_error,
            prompt=prompt,
            prompt_name=prompt_name,
        )
        return request.run()

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
        request = Request.embeddings(
            self._registry, name, [text], output=output, single=True, prompt=prompt, prompt_name=prompt_name
        )
        return await request.arun()

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
        request = Request.embeddings(
            self._registry,
            name,
            texts,
            output=output,
            progress=progress,
            on_error=on_error,
            prompt=prompt,
            prompt_name=prompt_name,
        )
        return await request.arun()

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
        result: Reranking = Request.pairs(
            self._registry, name, query, documents, top_n=top_n, normalize=normalize
        ).run()
        return result

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
        request = Request.pairs(self._registry, name, query, documents, top_n=top_n, normalize=normalize)
        result: Reranking = await request.arun()
        return result

    # ------------------------------------------------------------------ tokens and usage
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
        request = Request.embeddings(
            self._registry, name, texts, output="numpy", prompt=prompt, prompt_name=prompt_name
        )
        rows: FloatArray = await request.arun()
        return rows, request.tokens

    def count_tokens(
        self, name: str, texts: Iterable[str], *, prompt: str | None = None, prompt_name: str | None = None
    ) -> int:
        """Tokens the model sees for ``texts`` (special tokens and ``prompt`` included, before any cut).

        Tokenizes on the model's workers (no decode); raises ``InvalidInputError`` as embedding would.
        """
        count: int = Request.embeddings(
            self._registry, name, texts, prompt=prompt, prompt_name=prompt_name, count_only=True
        ).run()
        return count

    async def acount_tokens(
        self, name: str, texts: Iterable[str], *, prompt: str | None = None, prompt_name: str | None = None
    ) -> int:
        """Async :meth:`count_tokens`."""
        request = Request.embeddings(
            self._registry, name, texts, prompt=prompt, prompt_name=prompt_name, count_only=True
        )
        count: int = await request.arun()
        return count

    # ------------------------------------------------------------------ diagnostics and cache
    def worker_pids(self, name: str) -> list[int | None]:
        """Diagnostics: the process id serving each worker of model ``name``.

        With ``isolation="process"`` these are the child processes (None while a crashed child awaits restart);
        otherwise every entry is this process's id.
        """
        return self._registry.worker_pids(name)

    def model_health(self, name: str, *, revive: bool = False) -> ModelHealth:
        """Diagnostics: the state of each worker of model ``name`` (live or not, crashes, restarts, last error).

        Args:
            name: A loaded model's name.
            revive: Queue a check-only request for each dead worker, so a lost child process is restarted without
                waiting for a client's request. Defaults to False.
        """
        return self._registry.model_health(name, revive=revive)

    def cache_stats(self) -> CacheStats:
        """Hit/miss counters of the embedding cache."""
        return self._registry.cache.stats()

    def clear_cache(self) -> None:
        """Empty the embedding cache."""
        self._registry.cache.clear()

    # ------------------------------------------------------------------ lifecycle
    @property
    def is_closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._registry.closed

    def close(self, timeout: float | None = 30.0) -> None:
        """Unload every model and stop every worker (idempotent). Queued requests get ``EngineClosedError``.

        Args:
            timeout: Seconds to wait in all for workers to finish the decode they are running. A process-isolated
                worker still running then has its child killed; an in-process decode cannot be interrupted and
                its worker exits when the decode returns. Defaults to 30.
        """
        self._registry.close(timeout)

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
        state = "closed" if self.is_closed else f"models={self._registry.names()}"
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

    # ------------------------------------------------------------------ internals
    def _check_open(self) -> None:
        if self.is_closed:
            raise EngineClosedError("the engine is closed")
