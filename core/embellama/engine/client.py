"""``EmbeddingClient``: the one piece the LangChain and LlamaIndex adapters delegate to.

A client holds validated options and, on first use, registers its model with an engine through
:meth:`~embellama.engine.registry.ModelRegistry.ensure_model`. Every client built from the same file and options, in
any framework, therefore shares one loaded model in the process-wide :func:`shared_engine`. The client adds what
RAG frameworks need on top of the engine: query/document instruction prefixes, batching with an optional progress
bar, twin sync and async methods (async awaits the model thread), and a stable cache ``namespace``.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import logging
import os
import re
import threading
import weakref
from collections.abc import Iterator, Sequence, Sized
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from embellama.config import MODEL_OPTIONS, ModelConfig
from embellama.engine.engine import EmbeddingEngine
from embellama.engine.planning import OnError
from embellama.engine.registry import in_thread
from embellama.engine.request import ProgressCallback
from embellama.errors import ConfigurationError, InvalidInputError, ModelNotFoundError
from embellama.files.default_model import cache_dir, default_model_file, default_model_path
from embellama.files.gguf import file_fingerprint, read_header
from embellama.files.hub import FromPretrained
from embellama.migration import hub_id_hint, looks_like_hub_id, unknown_options_error
from embellama.model.families import detect_family
from embellama.types import BatchResult, ModelInfo, Reranking

__all__ = [
    "CLIENT_OPTIONS",
    "MODEL_PATH_ENV",
    "ClientBacked",
    "ClientSlot",
    "EmbeddingClient",
    "model_path_from_env",
    "shared_engine",
]

logger = logging.getLogger(__name__)

_SAFE = re.compile(r"[^A-Za-z0-9_.-]")

MODEL_PATH_ENV = "EMBELLAMA_MODEL_PATH"
"""Environment variable naming the GGUF file to use when no ``model_path`` is given."""

CLIENT_OPTIONS = (
    "model_path",
    "engine",
    "model_name",
    "query_instruction",
    "document_instruction",
    "show_progress",
    "on_error",
    "preload",
)
"""The keywords of :class:`EmbeddingClient` besides the model options."""

_shared: EmbeddingEngine | None = None
_shared_lock = threading.Lock()


def shared_engine() -> EmbeddingEngine:
    """The process-wide engine every client uses unless given its own; created on first use, closed at exit.

    If it was closed, a new one is created.
    """
    global _shared
    with _shared_lock:
        if _shared is None or _shared.is_closed:
            _shared = EmbeddingEngine()
        return _shared


def model_path_from_env() -> str | None:
    """The model path named by ``$EMBELLAMA_MODEL_PATH``, or None when it is unset or empty."""
    return os.environ.get(MODEL_PATH_ENV) or None


def _check_instruction(name: str, value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ConfigurationError(f"{name} must be a string, got {value!r}")
    return value


class EmbeddingClient(FromPretrained):
    """Embed documents and queries for a RAG framework, sharing one loaded model per file and options.

    Construction only validates options (no file is read, nothing is loaded); the model is registered on first
    use, or at once with ``preload=True`` / :meth:`preload`.

    Args:
        model_path: GGUF file. Defaults to ``$EMBELLAMA_MODEL_PATH``, else the default model (built on first use),
            unless ``engine`` and ``model_name`` name a model already loaded in that engine.
        engine: Engine to use. Defaults to :func:`shared_engine`.
        model_name: With ``engine`` and no ``model_path``: the name of a model already loaded there. Otherwise the
            name the model is registered under (a model with the same file and options keeps its existing name).
        query_instruction: Prefix added to every query (e.g. ``"query: "`` for E5 models). Defaults to the model
            family's query prompt (see :mod:`embellama.model.families`), if any; ``""`` means none.
        document_instruction: Prefix added to every document (e.g. ``"passage: "``). Defaults to the model
            family's document prompt, if any; ``""`` means none.
        show_progress: Show a tqdm progress bar while embedding documents. Defaults to False.
        on_error: ``"raise"`` (default): a bad text fails the call, naming its index. ``"collect"``: every valid
            text gets its vector and each bad one ``None``; the errors are in :attr:`last_errors` and logged.
        preload: Load the model now instead of on first use. Defaults to False.
        **model_options: Any :class:`~embellama.config.ModelConfig` option (``pooling``, ``normalize``,
            ``dimensions``, ``long_text_mode``, ``max_tokens``, ``n_workers``, ``isolation``, ...), passed through.
            A keyword of another library (``device``, ``max_length``, ``n_ctx``, ``model_kwargs``, ...) raises,
            naming the embellama equivalent (see :mod:`embellama.migration`).

    Raises:
        ConfigurationError: an option is invalid or unknown.
        ModelNotFoundError: ``engine`` and ``model_name`` name no loaded model, or a hub repository id was given
            where a GGUF file is expected (the message points to ``from_pretrained``).
    """

    def __init__(
        self,
        model_path: str | Path | None = None,
        *,
        engine: EmbeddingEngine | None = None,
        model_name: str | None = None,
        query_instruction: str | None = None,
        document_instruction: str | None = None,
        show_progress: bool = False,
        on_error: OnError = "raise",
        preload: bool = False,
        **model_options: Any,
    ) -> None:
        if engine is not None and not isinstance(engine, EmbeddingEngine):
            raise ConfigurationError(f"engine must be an EmbeddingEngine, got {type(engine).__name__}")
        if not isinstance(show_progress, bool):
            raise ConfigurationError(f"show_progress must be a bool, got {show_progress!r}")
        unknown = {k: v for k, v in model_options.items() if k not in MODEL_OPTIONS}
        if unknown:
            raise unknown_options_error(unknown, (*MODEL_OPTIONS, *CLIENT_OPTIONS), where="EmbeddingClient")
        self.query_instruction = _check_instruction("query_instruction", query_instruction)
        self.document_instruction = _check_instruction("document_instruction", document_instruction)
        self.show_progress = show_progress
        if on_error not in ("raise", "collect"):
            raise ConfigurationError(f"on_error must be 'raise' or 'collect', got {on_error!r}")
        self.on_error: OnError = on_error
        self.last_errors: dict[int, InvalidInputError] = {}
        """With ``on_error="collect"``: the errors of the last ``embed_documents`` call, by index."""
        self._engine = engine
        self._lock = threading.Lock()
        self._loaded: tuple[EmbeddingEngine, str] | None = None
        self._release: Any = None
        self.config: ModelConfig | None
        given = {k: v for k, v in model_options.items() if not (v is None and MODEL_OPTIONS[k] is None)}
        by_name = engine is not None and model_path is None
        for value in (model_path, None if by_name else model_name):
            if value is not None and looks_like_hub_id(value):
                raise ModelNotFoundError(hub_id_hint(value))
        if model_name is not None and _names_a_file(model_name) and not (engine is not None and model_path is None):
            # the Hugging Face habit: model_name="/path/model.gguf" means the file
            if model_path is not None and str(model_path) not in (model_name, model_path_from_env()):
                raise ConfigurationError(
                    f"model_name={model_name!r} names a file and model_path={str(model_path)!r} another; pass the "
                    "GGUF file as model_path (model_name is the name to register it under)"
                )
            model_path, model_name = model_name, None
        if engine is not None and model_path is None and model_name is not None:
            # a model already registered in the caller's engine: its options are the engine's
            changed = sorted(k for k, v in given.items() if v != MODEL_OPTIONS[k])
            if changed:
                raise ConfigurationError(
                    f"options {changed} configure a model and cannot be set when using the model {model_name!r} "
                    "already loaded in the given engine; pass model_path to register a model with them"
                )
            engine.model_info(model_name)  # ModelNotFoundError now rather than at first use
            self.config = None
            self._loaded = (engine, model_name)
        else:
            if model_path is None:
                model_path = model_path_from_env()
            if model_path is None:
                # the default model's path is known without building it; building waits for first use
                model_path = _default_model_file()
            self.config = ModelConfig(model_path=model_path, model_name=model_name, **given)
        if preload:
            self.preload()

    @property
    def model_path(self) -> Path:
        """The GGUF file this client embeds with (for a model given by name, the file its engine loaded)."""
        if self.config is not None:
            return Path(self.config.model_path)
        return Path(self.info.path)

    @property
    def model_name(self) -> str:
        """The model's registered name (before loading: the name it will ask for)."""
        if self._loaded is not None:
            return self._loaded[1]
        assert self.config is not None
        return self.config.name

    @property
    def info(self) -> ModelInfo:
        """Metadata of the loaded model (loads it if needed)."""
        engine, name = self.ensure_loaded()
        return engine.model_info(name)

    @property
    def engine(self) -> EmbeddingEngine:
        """The engine serving this client's model (the shared one unless another was given)."""
        return self.ensure_loaded()[0]

    @property
    def namespace(self) -> str:
        """A stable cache key for this client's document vectors (characters ``[A-Za-z0-9_.-]`` only).

        Made of the model file's content fingerprint, every option that changes a vector (pooling, normalization,
        dimensions, truncation, input limit) and the document instruction: two clients giving a text the same
        document vector have the same namespace, and changing any of these changes it. Safe as a LangChain
        ``CacheBackedEmbeddings`` namespace with any byte store, ``LocalFileStore`` included. Does not load the
        model (the file is hashed once per file identity).
        """
        return self._namespace("doc", self.document_instruction, "document")

    @property
    def query_namespace(self) -> str:
        """Like :attr:`namespace`, for query vectors: it follows the query instruction instead (e.g. LangChain's
        ``CacheBackedEmbeddings(query_embedding_cache=...)``)."""
        return self._namespace("query", self.query_instruction, "query")

    def role_prompt(self, role: str) -> str:
        """The prefix put in front of texts of ``role`` (``"query"`` or ``"document"``): this client's
        instruction when set, else the model's prompt for the role (its family's preset), else none."""
        instruction = self.query_instruction if role == "query" else self.document_instruction
        if instruction is not None:
            return instruction
        if self._loaded is not None and not self._loaded[0].is_closed:
            return self._loaded[0].model_info(self._loaded[1]).prompts.get(role, "")
        assert self.config is not None
        if self._builds_default:
            default_model_path()
        if self.config.prompts is not None:
            return self.config.prompts.get(role, "")
        return detect_family(read_header(self.config.model_path).metadata).prompts.get(role, "")

    def _namespace(self, role: str, instruction: str | None, prompt_role: str) -> str:
        instruction = self.role_prompt(prompt_role) if instruction is None else instruction
        if self.config is not None:
            if self._builds_default:
                default_model_path()
            config = self.config
        else:
            engine, name = self.ensure_loaded()
            config = engine.registry.model_config(name)
        pooling, _normalize, dims, max_tokens, long_texts, add_eos, _mode, _p = config.output_options()
        prompt = hashlib.sha256(instruction.encode("utf-8")).hexdigest()[:8]
        parts = [
            "embellama",
            _SAFE.sub("_", config.name),
            file_fingerprint(config.model_path),
            str(pooling),
            _norm_part(config),
            f"dims{dims or 'all'}",
            f"long-{long_texts}",
            f"eos{'-model' if add_eos is None else int(add_eos)}",
            f"max{max_tokens or 'model'}",
            f"{role}-{prompt}",
        ]
        return ".".join(parts)

    # ------------------------------------------------------------------ loading
    def ensure_loaded(self) -> tuple[EmbeddingEngine, str]:
        """Register the model (sharing an identical one already loaded) and return ``(engine, name)``.

        The client counts as a user of the model until it is garbage-collected; a model no client uses any more is
        unloaded (see :meth:`~embellama.engine.registry.ModelRegistry.acquire`).
        """
        with self._lock:
            loaded = self._loaded
            if loaded is not None and not (loaded[0].is_closed and self._engine is None):
                return loaded
            # first use, or the shared engine was closed: register again in the (new) shared engine
            assert self.config is not None
            if self._builds_default:
                default_model_path()
            engine = self._engine or shared_engine()
            name = engine.registry.acquire(self.config)
            if self._release is not None:
                self._release.detach()
            self._release = weakref.finalize(self, engine.registry.release, name)
            self._loaded = (engine, name)
            return self._loaded

    async def aensure_loaded(self) -> tuple[EmbeddingEngine, str]:
        """:meth:`ensure_loaded` for async code: a first load (or default-model build) runs on a helper thread,
        so the event loop never blocks on it."""
        loaded = self._loaded
        if loaded is not None and not loaded[0].is_closed:
            return loaded
        result: tuple[EmbeddingEngine, str] = await asyncio.wrap_future(in_thread(self.ensure_loaded, "embellama-load"))
        return result

    @property
    def _builds_default(self) -> bool:
        if self.config is None:
            return False
        path = Path(self.config.model_path)
        # the parent first: a model given by path never reads (or trips over) $EMBELLAMA_DEFAULT_WEIGHTS
        return path.parent == cache_dir() / "models" and path == _default_model_file()

    def __getstate__(self) -> dict[str, Any]:
        """Picklable state: options only; the other side registers the model in its own shared engine."""
        state = dict(self.__dict__)
        state.update(_lock=None, _loaded=None, _release=None, last_errors={})
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __deepcopy__(self, memo: dict[int, Any]) -> EmbeddingClient:
        clone = copy.copy(self)
        clone.__setstate__(self.__getstate__())
        return clone

    def preload(self) -> ModelInfo:
        """Load the model now (otherwise it loads on first use); return its metadata."""
        return self.info

    # ------------------------------------------------------------------ embedding
    def embed_documents(self, texts: Sequence[str]) -> list[list[float]]:
        """Embed documents (with the document instruction): one ``list[float]`` per text, in order.

        With ``on_error="collect"`` a text that cannot be embedded gets ``None`` instead (see :attr:`last_errors`).
        """
        engine, name = self.ensure_loaded()
        with self._users_model_name(), self._progress(texts) as progress:
            result = engine.embed_batch(
                name, texts, progress=progress, on_error=self.on_error, prompt=self.role_prompt("document")
            )
        return self._vectors(result)

    def embed_query(self, text: str) -> list[float]:
        """Embed one query (with the query instruction, or the model's query prompt)."""
        engine, name = self.ensure_loaded()
        with self._users_model_name():
            return engine.embed(name, text, prompt=self.role_prompt("query"))

    async def aembed_documents(self, texts: Sequence[str]) -> list[list[float]]:
        """Async :meth:`embed_documents`: awaits the model thread, never blocks the loop or uses an executor."""
        engine, name = await self.aensure_loaded()
        with self._users_model_name(), self._progress(texts) as progress:
            result = await engine.aembed_batch(
                name, texts, progress=progress, on_error=self.on_error, prompt=self.role_prompt("document")
            )
        return self._vectors(result)

    async def aembed_query(self, text: str) -> list[float]:
        """Async :meth:`embed_query`."""
        engine, name = await self.aensure_loaded()
        with self._users_model_name():
            return await engine.aembed(name, text, prompt=self.role_prompt("query"))

    # ------------------------------------------------------------------ reranking
    def rerank(
        self, query: str, documents: Sequence[str], *, top_n: int | None = None, normalize: bool = False
    ) -> Reranking:
        """Score ``documents`` against ``query`` with this client's reranker model (see ``EmbeddingEngine.rerank``)."""
        engine, name = self.ensure_loaded()
        with self._users_model_name():
            return engine.rerank(name, query, documents, top_n=top_n, normalize=normalize)

    async def arerank(
        self, query: str, documents: Sequence[str], *, top_n: int | None = None, normalize: bool = False
    ) -> Reranking:
        """Async :meth:`rerank`: the first load runs on a helper thread, scoring awaits the model thread."""
        engine, name = await self.aensure_loaded()
        with self._users_model_name():
            return await engine.arerank(name, query, documents, top_n=top_n, normalize=normalize)

    def _vectors(self, result: Any) -> list[Any]:
        if not isinstance(result, BatchResult):
            vectors: list[list[float]] = result
            return vectors
        user = self._users_name
        self.last_errors = {i: e if user is None else e.with_model_name(user) for i, e in result.errors.items()}
        if self.last_errors:
            first = next(iter(self.last_errors.values()))
            logger.warning(
                "%d of %d texts could not be embedded and got None (on_error='collect'); first: %s",
                len(result.errors),
                len(result.embeddings),
                first,
            )
        return result.embeddings

    def __repr__(self) -> str:
        where = self.config.model_path if self.config is not None else "registered"
        return f"<EmbeddingClient {self.model_name!r} ({where})>"

    # ------------------------------------------------------------------ internals
    @property
    def _users_name(self) -> str | None:
        """The model's name as the user gave it (the file name without ``.gguf``, or their ``model_name``): the
        engine registers a second configuration of one file as ``name#2``, which errors must not show."""
        return None if self.config is None else self.config.name

    @contextmanager
    def _users_model_name(self) -> Iterator[None]:
        """Errors about a text name the model as the user knows it, never its internal registration name."""
        try:
            yield
        except InvalidInputError as exc:
            user = self._users_name
            if user is None or exc.model_name in (None, user):
                raise
            raise exc.with_model_name(user) from None

    @contextmanager
    def progress_scope(self, total: int, *, enabled: bool = True) -> Iterator[None]:
        """One progress bar for a framework call that reaches this client in several sub-batches (LlamaIndex).

        Inside the scope, each ``embed_documents`` advances this bar instead of opening its own; with
        ``enabled=False`` (the framework shows its own bar) no embellama bar is shown.
        """
        bar = self._new_bar(total) if enabled and self.show_progress and total else None
        token = _OUTER_BAR.set(_OuterBar(bar))
        try:
            yield
        finally:
            _OUTER_BAR.reset(token)
            if bar is not None:
                bar.close()

    @contextmanager
    def _progress(self, texts: Sequence[str]) -> Iterator[ProgressCallback | None]:
        """A progress callback driving a tqdm bar (the engine calls it as texts finish), or None."""
        outer = _OUTER_BAR.get()
        if outer is not None:
            if outer.bar is None:
                yield None
                return
            seen = [0]

            def advance_outer(done: int, _total: int) -> None:
                outer.bar.update(done - seen[0])
                seen[0] = done

            yield advance_outer
            return
        total = len(texts) if isinstance(texts, Sized) and not isinstance(texts, (str, bytes)) else 0
        if not self.show_progress or total == 0:
            yield None
            return
        bar = self._new_bar(total)

        def advance(done: int, _total: int) -> None:
            bar.update(done - bar.n)

        try:
            yield advance
        finally:
            bar.close()

    @staticmethod
    def _new_bar(total: int) -> Any:
        try:
            from tqdm.auto import tqdm
        except ImportError:  # pragma: no cover - tqdm is in the progress extra
            raise ConfigurationError("show_progress needs tqdm: pip install 'embellama[progress]'") from None
        return tqdm(total=total, desc="Embedding", unit="text")


class _OuterBar:
    """The bar of a whole framework call (None: no embellama bar for it)."""

    def __init__(self, bar: Any) -> None:
        self.bar = bar


_OUTER_BAR: ContextVar[_OuterBar | None] = ContextVar("embellama_outer_progress", default=None)


def _norm_part(config: ModelConfig) -> str:
    """The namespace part naming how vectors are normalized: ``norm1`` (L2) and ``norm0`` (none) as before the
    other modes existed, so namespaces already in use stay the same."""
    if not config.normalize or config.normalization == "none":
        return "norm0"
    if config.normalization == "p_norm":
        return f"norm-p{config.norm_p!r}"
    return "norm1" if config.normalization == "l2" else f"norm-{config.normalization}"


def _default_model_file() -> Path:
    return cache_dir() / "models" / default_model_file()


def _names_a_file(name: str) -> bool:
    """Whether a ``model_name`` is really a path to a GGUF file."""
    return name.lower().endswith(".gguf") or os.sep in name or Path(name).expanduser().is_file()


class ClientSlot:
    """Holds the client of a framework object and rebuilds it when the object's options change.

    Adapters are mutable pydantic models: a field set after construction (or by ``model_copy(update=...)``) must
    take effect, so the client is rebuilt whenever the options differ from those it was built with.
    """

    def __init__(self) -> None:
        self._client: EmbeddingClient | None = None
        self._options: dict[str, Any] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {}  # the client is rebuilt from the object's fields on the other side

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__()  # type: ignore[misc]

    def __copy__(self) -> ClientSlot:
        return ClientSlot()  # a copied adapter builds its own client (its fields may be changed independently)

    def __deepcopy__(self, memo: dict[int, Any]) -> ClientSlot:
        return ClientSlot()

    def get(self, options: dict[str, Any]) -> EmbeddingClient:
        """The client for ``options`` (keyword arguments of :class:`EmbeddingClient`), built if they changed."""
        if self._client is None or options != self._options:
            self._client = EmbeddingClient(**options)
            self._options = dict(options)
        return self._client


class ClientBacked(FromPretrained):
    """Mixin for framework objects that delegate to an :class:`EmbeddingClient` (both adapters use it).

    Gives them ``from_pretrained`` and the identity properties; subclasses provide :attr:`client`.
    """

    @property
    def client(self) -> EmbeddingClient:
        """The client doing the work."""
        raise NotImplementedError

    @property
    def namespace(self) -> str:
        """A stable cache key for document vectors (``[A-Za-z0-9_.-]`` only), e.g. a ``CacheBackedEmbeddings``
        namespace; see :attr:`embellama.engine.client.EmbeddingClient.namespace`."""
        return self.client.namespace

    @property
    def query_namespace(self) -> str:
        """A stable cache key for query vectors (follows the query instruction)."""
        return self.client.query_namespace

    @property
    def info(self) -> ModelInfo:
        """Metadata of the loaded model (loads it if needed)."""
        return self.client.info
