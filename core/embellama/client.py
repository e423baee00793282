"""``EmbeddingClient``: the one piece the LangChain and LlamaIndex adapters delegate to.

A client holds validated options and, on first use, registers its model with an engine through
:meth:`~embellama.engine.EmbeddingEngine.ensure_model`. Every client built from the same file and options, in
any framework, therefore shares one loaded model in the process-wide :func:`shared_engine`. The client adds what
RAG frameworks need on top of the engine: query/document instruction prefixes, batching with an optional progress
bar, twin sync and async methods (async awaits the model thread), and a stable cache ``namespace``.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator, Sequence, Sized
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .config import MODEL_OPTIONS, ModelConfig
from .default_model import DEFAULT_MODEL_FILE, cache_dir, default_model_path
from .engine import EmbeddingEngine, ProgressCallback
from .errors import ConfigurationError
from .gguf import file_fingerprint
from .hub import FromPretrained
from .types import ModelInfo

__all__ = ["MODEL_PATH_ENV", "ClientBacked", "ClientSlot", "EmbeddingClient", "model_path_from_env", "shared_engine"]

MODEL_PATH_ENV = "EMBELLAMA_MODEL_PATH"
"""Environment variable naming the GGUF file to use when no ``model_path`` is given."""

DEFAULT_BATCH_SIZE = 64

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


def _check_instruction(name: str, value: object) -> str:
    if value is None:
        return ""
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
        batch_size: Kept for compatibility: the engine plans and splits every request itself. Defaults to 64.
        query_instruction: Prefix added to every query (e.g. ``"query: "`` for E5 models). Defaults to none.
        document_instruction: Prefix added to every document (e.g. ``"passage: "``). Defaults to none.
        show_progress: Show a tqdm progress bar while embedding documents. Defaults to False.
        preload: Load the model now instead of on first use. Defaults to False.
        **model_options: Any :class:`~embellama.config.ModelConfig` option (``pooling``, ``normalize``,
            ``dimensions``, ``truncate``, ``max_tokens``, ``n_workers``, ``isolation``, ...), passed through.

    Raises:
        ConfigurationError: an option is invalid.
        ModelNotFoundError: ``engine`` and ``model_name`` name no loaded model.
    """

    def __init__(
        self,
        model_path: str | Path | None = None,
        *,
        engine: EmbeddingEngine | None = None,
        model_name: str | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        query_instruction: str | None = "",
        document_instruction: str | None = "",
        show_progress: bool = False,
        preload: bool = False,
        **model_options: Any,
    ) -> None:
        if engine is not None and not isinstance(engine, EmbeddingEngine):
            raise ConfigurationError(f"engine must be an EmbeddingEngine, got {type(engine).__name__}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigurationError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        if not isinstance(show_progress, bool):
            raise ConfigurationError(f"show_progress must be a bool, got {show_progress!r}")
        unknown = sorted(set(model_options) - set(MODEL_OPTIONS))
        if unknown:
            raise ConfigurationError(f"unknown option(s) {unknown}; model options are {sorted(MODEL_OPTIONS)}")
        self.query_instruction = _check_instruction("query_instruction", query_instruction)
        self.document_instruction = _check_instruction("document_instruction", document_instruction)
        self.batch_size = batch_size
        self.show_progress = show_progress
        self._engine = engine
        self._lock = threading.Lock()
        self._loaded: tuple[EmbeddingEngine, str] | None = None
        self.config: ModelConfig | None
        self._build_default = False
        given = {k: v for k, v in model_options.items() if not (v is None and MODEL_OPTIONS[k] is None)}
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
                model_path = cache_dir() / "models" / DEFAULT_MODEL_FILE
                self._build_default = True
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
        """A stable key for this client's vectors: model file identity, output options and document prefix.

        Two clients giving a text the same document vector have the same namespace; changing the file, pooling,
        normalization, dimensions, truncation or the document instruction changes it. Use it as LangChain's
        ``CacheBackedEmbeddings`` namespace. Reads the file's head and tail, but does not load the model.
        """
        if self.config is not None:
            if self._build_default:
                default_model_path()
            fingerprint = file_fingerprint(self.config.model_path)
            pooling, normalize, dims, truncate, max_tokens = self.config.output_options()
            stem = self.config.name
        else:
            info = self.info
            fingerprint, pooling, normalize, dims = info.fingerprint, info.pooling, info.normalize, info.dimensions
            truncate, max_tokens = None, None
            stem = info.name
        prefix = hashlib.sha256(self.document_instruction.encode("utf-8")).hexdigest()[:8]
        parts = [stem, fingerprint, pooling, f"norm={int(normalize)}", f"dims={dims or 'all'}"]
        parts += [
            f"trunc={'?' if truncate is None else int(truncate)}",
            f"max={max_tokens or 'model'}",
            f"doc={prefix}",
        ]
        return "embellama:" + ":".join(str(p) for p in parts)

    # ------------------------------------------------------------------ loading
    def ensure_loaded(self) -> tuple[EmbeddingEngine, str]:
        """Register the model (sharing an identical one already loaded) and return ``(engine, name)``."""
        with self._lock:
            loaded = self._loaded
            if loaded is not None and not (loaded[0].is_closed and self._engine is None):
                return loaded
            # first use, or the shared engine was closed: register again in the (new) shared engine
            assert self.config is not None
            if self._build_default:
                default_model_path()
            engine = self._engine or shared_engine()
            name = engine.ensure_model(self.config)
            self._loaded = (engine, name)
            return self._loaded

    def preload(self) -> ModelInfo:
        """Load the model now (otherwise it loads on first use); return its metadata."""
        return self.info

    # ------------------------------------------------------------------ embedding
    def embed_documents(self, texts: Sequence[str]) -> list[list[float]]:
        """Embed documents (with the document instruction): one ``list[float]`` per text, in order."""
        engine, name = self.ensure_loaded()
        with self._progress(texts) as progress:
            vectors: list[list[float]] = engine.embed_batch(
                name, _prefixed(texts, self.document_instruction), progress=progress
            )
        return vectors

    def embed_query(self, text: str) -> list[float]:
        """Embed one query (with the query instruction)."""
        engine, name = self.ensure_loaded()
        return engine.embed(name, _prefixed_one(text, self.query_instruction))

    async def aembed_documents(self, texts: Sequence[str]) -> list[list[float]]:
        """Async :meth:`embed_documents`: awaits the model thread, never blocks the loop or uses an executor."""
        engine, name = self.ensure_loaded()
        with self._progress(texts) as progress:
            vectors: list[list[float]] = await engine.aembed_batch(
                name, _prefixed(texts, self.document_instruction), progress=progress
            )
        return vectors

    async def aembed_query(self, text: str) -> list[float]:
        """Async :meth:`embed_query`."""
        engine, name = self.ensure_loaded()  # loads once per process and model; requests then await the thread
        return await engine.aembed(name, _prefixed_one(text, self.query_instruction))

    def __repr__(self) -> str:
        where = self.config.model_path if self.config is not None else "registered"
        return f"<EmbeddingClient {self.model_name!r} ({where})>"

    # ------------------------------------------------------------------ internals
    @contextmanager
    def _progress(self, texts: Sequence[str]) -> Iterator[ProgressCallback | None]:
        """A progress callback driving a tqdm bar (the engine calls it as texts finish), or None."""
        total = len(texts) if isinstance(texts, Sized) and not isinstance(texts, (str, bytes)) else 0
        if not self.show_progress or total == 0:
            yield None
            return
        try:
            from tqdm.auto import tqdm
        except ImportError:  # pragma: no cover - tqdm is in the progress extra
            raise ConfigurationError("show_progress needs tqdm: pip install 'embellama[progress]'") from None
        bar = tqdm(total=total, desc="Embedding", unit="text")

        def advance(done: int, _total: int) -> None:
            bar.update(done - bar.n)

        try:
            yield advance
        finally:
            bar.close()


def _prefixed(texts: Sequence[str], prefix: str) -> Sequence[str]:
    """``texts`` with ``prefix`` in front of each str (other items are left for the engine to report)."""
    if not prefix or texts is None or isinstance(texts, (str, bytes)):
        return texts
    return [prefix + t if isinstance(t, str) else t for t in texts]


def _prefixed_one(text: str, prefix: str) -> str:
    return prefix + text if prefix and isinstance(text, str) else text


class ClientSlot:
    """Holds the client of a framework object and rebuilds it when the object's options change.

    Adapters are mutable pydantic models: a field set after construction (or by ``model_copy(update=...)``) must
    take effect, so the client is rebuilt whenever the options differ from those it was built with.
    """

    def __init__(self) -> None:
        self._client: EmbeddingClient | None = None
        self._options: dict[str, Any] | None = None

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
        """A stable key from the model's identity and output options, e.g. a ``CacheBackedEmbeddings`` namespace."""
        return self.client.namespace

    @property
    def info(self) -> ModelInfo:
        """Metadata of the loaded model (loads it if needed)."""
        return self.client.info
