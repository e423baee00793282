"""``EmbeddingModel``: one ``llama_cpp.Llama``, its lifecycle, tokenization and the forward pass.

An ``EmbeddingModel`` is **not thread-safe** (llama.cpp contexts are not): the engine gives each instance to one
worker thread for its whole life. Use it directly only from a single thread.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import llama_cpp
import numpy as np
import numpy.typing as npt
from llama_cpp._internals import LlamaModel

from . import _native
from .batching import plan_decodes
from .config import ModelConfig, Pooling
from .errors import ConfigurationError, EmbeddingError, EngineClosedError, InvalidInputError, ModelLoadError
from .gguf import MAX_SEQ_LENGTH_KEY, GGUFHeader, check_model_file, file_fingerprint, read_header
from .pooling import pool_tokens, postprocess
from .wordpiece import WordPieceTokenizer

__all__ = ["EmbeddingModel", "validate_text"]

logger = logging.getLogger(__name__)

_LLAMA_POOLING = {
    Pooling.MEAN: llama_cpp.LLAMA_POOLING_TYPE_MEAN,
    Pooling.CLS: llama_cpp.LLAMA_POOLING_TYPE_CLS,
    Pooling.LAST: llama_cpp.LLAMA_POOLING_TYPE_LAST,
    Pooling.MAX: llama_cpp.LLAMA_POOLING_TYPE_NONE,
    Pooling.MEAN_SQRT_LEN: llama_cpp.LLAMA_POOLING_TYPE_NONE,
}
_GGUF_POOLING = {1: Pooling.MEAN, 2: Pooling.CLS, 3: Pooling.LAST}
# general.file_type values of unquantized weights: F32, F16, BF16
_UNQUANTIZED_FILE_TYPES = {0, 1, 32}

_native.install_log_handler()

# printable ASCII plus \t \n \r: llama.cpp's BERT tokenizer agrees with Hugging Face's on exactly these
_PLAIN_ASCII = re.compile(r"[\x20-\x7e\t\n\r]*")


def validate_text(text: object, index: int | None = None) -> str:
    """Return ``text`` if it can be embedded, else raise ``InvalidInputError`` naming ``index`` and the reason."""
    if not isinstance(text, str):
        raise InvalidInputError(f"expected str, got {type(text).__name__}", index=index)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInputError(
            f"not valid Unicode: {exc.reason} at character {exc.start} ({text[exc.start : exc.end]!r})", index=index
        ) from None
    return text


class EmbeddingModel:
    """One loaded GGUF embedding model.

    Example:
        >>> with EmbeddingModel(ModelConfig(model_path="model.gguf")) as model:  # doctest: +SKIP
        ...     vectors = model.embed(["hello", "world"])
    """

    def __init__(self, config: ModelConfig) -> None:
        self.config = config
        self._llama: Any = None
        self._ctx: Any = None
        self._threads = 0
        self._key: tuple[str, int, bool] = ("", 0, False)
        self._batch: _native.DecodeBatch | None = None
        self._header: GGUFHeader | None = None
        self._pooling: Pooling | None = None
        self._limit = 0
        self._n_embd = 0
        self._budget = 0
        self._add_eos = False
        self._has_memory = False
        self._fingerprint = ""
        self._wordpiece_tokenizer: WordPieceTokenizer | None = None

    # ----------------------------------------------------------------- lifecycle
    def load(self) -> EmbeddingModel:
        """Load the model (idempotent). Every check that can fail runs before llama.cpp touches the file.

        Raises:
            ModelNotFoundError: the file does not exist.
            ModelLoadError: not a loadable GGUF embedding model, or a crash-prone build for its weight type.
            ConfigurationError: options that do not fit this model.
        """
        if self._llama is not None:
            return self
        cfg = self.config
        path = Path(cfg.model_path)
        check_model_file(path)
        header = read_header(path)
        if cfg.n_gpu_layers != 0 and not llama_cpp.llama_supports_gpu_offload():
            raise ConfigurationError(
                f"n_gpu_layers={cfg.n_gpu_layers} but this llama-cpp-python build has no GPU support; use 0"
            )
        pooling = self._resolve_pooling(header)
        file_type = header.metadata.get("general.file_type")
        if file_type is not None and file_type not in _UNQUANTIZED_FILE_TYPES and cfg.isolation == "thread":
            risk = _native.amx_crash_risk()
            if risk:
                raise ModelLoadError(f"refusing to load quantized model {path.name}: {risk}")
        limit = self._input_limit(header)
        budget = max(cfg.batch_tokens, limit)
        n_seq = min(cfg.max_texts_per_decode, budget)
        # llama.cpp reserves its graph with n_ubatch / n_seq_max tokens per sequence; unless that divides evenly,
        # native pooling trips GGML_ASSERT(ggml_can_mul_mat) at context creation (found by test_broken_models)
        budget = -(-budget // n_seq) * n_seq
        _native.clear_native_errors()
        if cfg.verbose:
            _native.set_echo(True)
        key = (str(path.resolve()), cfg.n_gpu_layers, cfg.use_mmap)
        llama: Any = None
        try:
            llama = _shared_llama(key, lambda: _open_llama(path, cfg))
            ctx = _new_context(llama, cfg, pooling, budget, n_seq)
        except Exception as exc:
            if llama is not None:
                _release_llama(key)
            if cfg.verbose:
                _native.set_echo(False)
            detail = _native.recent_native_errors()
            raise ModelLoadError(
                f"llama.cpp could not load {path}: {exc}" + (f" ({detail})" if detail else "")
            ) from None
        self._n_embd = int(llama.n_embd())
        if cfg.dimensions is not None and cfg.dimensions > self._n_embd:
            llama_cpp.llama_free(ctx)
            _release_llama(key)
            if cfg.verbose:
                _native.set_echo(False)
            raise ConfigurationError(f"dimensions={cfg.dimensions} exceeds the model's {self._n_embd} dimensions")
        vocab = llama_cpp.llama_model_get_vocab(llama.model)
        self._add_eos = bool(llama_cpp.llama_vocab_get_add_eos(vocab))
        self._has_memory = bool(llama_cpp.llama_get_memory(ctx))
        self._batch = _native.DecodeBatch(budget, n_seq)
        self._llama, self._ctx, self._key, self._header, self._pooling = llama, ctx, key, header, pooling
        self._threads = cfg.threads
        self._limit, self._budget = limit, budget
        self._fingerprint = file_fingerprint(path)
        logger.info(
            "loaded %s (%s, %d dims, limit %d tokens, pooling %s, %d threads)",
            path.name,
            header.architecture,
            self._n_embd,
            limit,
            pooling.value,
            cfg.threads,
        )
        return self

    def unload(self) -> None:
        """Free the native model and context (idempotent)."""
        llama, ctx, self._llama, self._ctx, self._batch = self._llama, self._ctx, None, None, None
        if llama is not None:
            if ctx:
                llama_cpp.llama_free(ctx)
            _release_llama(self._key)
            if self.config.verbose:
                _native.set_echo(False)

    @property
    def is_loaded(self) -> bool:
        """Whether the native model is loaded."""
        return self._llama is not None

    def __enter__(self) -> EmbeddingModel:
        return self.load()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.unload()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.unload()

    # ----------------------------------------------------------------- metadata
    def _require(self) -> Any:
        if self._llama is None:
            raise EmbeddingError(f"model {self.config.name!r} is not loaded")
        return self._llama

    @property
    def native_dimensions(self) -> int:
        """Width of the model's own embeddings."""
        self._require()
        return self._n_embd

    @property
    def embedding_dimensions(self) -> int:
        """Width of the vectors this model returns (``dimensions`` if set, else the native width)."""
        self._require()
        return self.config.dimensions or self._n_embd

    @property
    def max_sequence_length(self) -> int:
        """Most tokens one input may have, special tokens included."""
        self._require()
        return self._limit

    @property
    def model_size(self) -> int:
        """Size of the model file in bytes."""
        return Path(self.config.model_path).stat().st_size

    @property
    def architecture(self) -> str:
        """``general.architecture`` of the GGUF, e.g. ``"bert"``."""
        self._require()
        assert self._header is not None
        return self._header.architecture

    @property
    def model_pooling(self) -> Pooling | None:
        """The pooling recorded in the GGUF, if any."""
        self._require()
        assert self._header is not None
        return _GGUF_POOLING.get(int(self._header.arch_value("pooling_type") or 0))

    @property
    def pooling(self) -> Pooling:
        """The pooling this instance applies."""
        self._require()
        assert self._pooling is not None
        return self._pooling

    @property
    def fingerprint(self) -> str:
        """Identity of the model file (size + content hash of its ends)."""
        self._require()
        return self._fingerprint

    @property
    def metadata(self) -> dict[str, Any]:
        """The GGUF's metadata (long arrays summarized)."""
        self._require()
        assert self._header is not None
        return dict(self._header.metadata)

    # ----------------------------------------------------------------- tokens
    def tokenize(self, text: str) -> list[int]:
        """Token ids of ``text`` with the model's special tokens (e.g. [CLS] ... [SEP]); never truncated.

        BERT vocabularies: plain printable ASCII goes through llama.cpp's tokenizer (identical to BERT's there,
        checked by a property test); anything else through :class:`~embellama.wordpiece.WordPieceTokenizer`,
        because llama.cpp's drops characters BERT keeps (Hangul jamo, Indic vowel signs, control characters).
        """
        llama = self._require()
        assert self._header is not None
        if self._header.metadata.get("tokenizer.ggml.model") == "bert" and not _PLAIN_ASCII.fullmatch(text):
            return self._wordpiece().encode(text)
        return list(llama.tokenize(text.encode("utf-8"), add_bos=True, special=False))

    def _wordpiece(self) -> WordPieceTokenizer:
        if self._wordpiece_tokenizer is None:  # built on first use: ~0.2 s for a 30k vocabulary
            llama, meta = self._require(), self.metadata
            vocab = llama_cpp.llama_model_get_vocab(llama.model)
            control = llama_cpp.LLAMA_TOKEN_ATTR_CONTROL
            pieces = (
                (
                    i,
                    llama_cpp.llama_vocab_get_text(vocab, i).decode("utf-8", errors="replace"),
                    bool(llama_cpp.llama_vocab_get_attr(vocab, i) & control),
                )
                for i in range(llama_cpp.llama_vocab_n_tokens(vocab))
            )
            self._wordpiece_tokenizer = WordPieceTokenizer(
                pieces,
                lowercase=bool(meta.get("tokenizer.ggml.normalizer.lowercase", True)),
                cls_id=int(meta.get("tokenizer.ggml.bos_token_id", 101)),
                sep_id=int(meta.get("tokenizer.ggml.seperator_token_id", meta.get("tokenizer.ggml.eos_token_id", 102))),
                unk_id=int(meta.get("tokenizer.ggml.unknown_token_id", 100)),
            )
        return self._wordpiece_tokenizer

    def prepare(self, text: object, index: int | None = None) -> npt.NDArray[np.int32]:
        """Validate and tokenize one input, applying the truncation policy.

        Raises:
            InvalidInputError: not a str, not encodable, empty after tokenization, or over the limit with
                ``truncate=False``.
        """
        text = validate_text(text, index)
        tokens = self.tokenize(text)
        if not tokens:
            raise InvalidInputError("text produces no tokens", index=index, model_name=self.config.name)
        if len(tokens) > self._limit:
            if not self.config.truncate:
                raise InvalidInputError(
                    f"{len(tokens)} tokens exceed the model's limit of {self._limit} "
                    "(pass truncate=True to cut long inputs)",
                    index=index,
                    n_tokens=len(tokens),
                    limit=self._limit,
                    model_name=self.config.name,
                )
            tokens = tokens[: self._limit - 1] + tokens[-1:] if self._add_eos else tokens[: self._limit]
        return np.asarray(tokens, dtype=np.int32)

    # ----------------------------------------------------------------- forward pass
    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """Embed ``texts``: one row per text, in order. Raises ``InvalidInputError`` for the first bad text."""
        return self.embed_tokens([self.prepare(t, i) for i, t in enumerate(texts)])

    def embed_tokens(
        self, sequences: Sequence[npt.NDArray[np.int32]], *, should_stop: Callable[[], bool] | None = None
    ) -> npt.NDArray[np.float32]:
        """Embed already-prepared token sequences (see :meth:`prepare`); rows follow the input order.

        Args:
            sequences: Token arrays from :meth:`prepare`.
            should_stop: Checked before each decode; when it returns True the call raises ``EngineClosedError``
                (so closing an engine waits for one decode, not for a whole round of texts).
        """
        self._require()
        assert self._batch is not None
        out = np.empty((len(sequences), self._n_embd), dtype=np.float32)
        lengths = [len(s) for s in sequences]
        for group in plan_decodes(lengths, max_tokens=self._budget, max_texts=len(self._batch.seq_values)):
            if should_stop is not None and should_stop():
                raise EngineClosedError(f"model {self.config.name!r} was closed while serving this request")
            out[group] = self._decode([sequences[i] for i in group])
        return postprocess(out, dimensions=self.config.dimensions, normalize_output=self.config.normalize)

    def set_threads(self, n_threads: int) -> None:
        """Use ``n_threads`` for the next decodes (cheap; a no-op when unchanged)."""
        if n_threads != self._threads and self._ctx:
            llama_cpp.llama_set_n_threads(self._ctx, n_threads, n_threads)
            self._threads = n_threads

    def _decode(self, sequences: list[npt.NDArray[np.int32]]) -> npt.NDArray[np.float32]:
        ctx, batch = self._ctx, self._batch
        assert batch is not None and self._pooling is not None
        if self._has_memory:
            llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)
        n = batch.fill(sequences)
        # encoder-only models (BERT) have no memory: llama_decode would log and forward to llama_encode
        rc = (llama_cpp.llama_decode if self._has_memory else llama_cpp.llama_encode)(ctx, batch.batch)
        if rc != 0:
            raise EmbeddingError(f"llama_decode failed with code {rc} ({n} tokens, {len(sequences)} texts)")
        dim = self._n_embd
        if self._pooling.is_native:
            rows = np.empty((len(sequences), dim), dtype=np.float32)
            for i in range(len(sequences)):
                ptr = llama_cpp.llama_get_embeddings_seq(ctx, i)
                if not ptr:
                    raise EmbeddingError(f"llama.cpp returned no embedding for sequence {i}")
                rows[i] = np.ctypeslib.as_array(ptr, shape=(dim,))
            return rows
        ptr = llama_cpp.llama_get_embeddings(ctx)
        if not ptr:
            raise EmbeddingError("llama.cpp returned no token embeddings")
        tokens = np.ctypeslib.as_array(ptr, shape=(n, dim))
        rows = np.empty((len(sequences), dim), dtype=np.float32)
        start = 0
        for i, seq in enumerate(sequences):
            rows[i] = pool_tokens(tokens[start : start + len(seq)], self._pooling)
            start += len(seq)
        return rows

    # ----------------------------------------------------------------- config resolution
    def _resolve_pooling(self, header: GGUFHeader) -> Pooling:
        requested = Pooling.parse(self.config.pooling)
        if requested is not Pooling.MODEL:
            return requested
        value = int(header.arch_value("pooling_type") or 0)
        if value == 4:
            raise ModelLoadError(f"{header.architecture} model uses RANK pooling (a reranker), not embeddings")
        if value not in _GGUF_POOLING:
            raise ConfigurationError(
                f"the model records no pooling type ({header.architecture}); pass pooling= one of "
                + ", ".join(repr(p.value) for p in Pooling if p is not Pooling.MODEL)
            )
        return _GGUF_POOLING[value]

    def _input_limit(self, header: GGUFHeader) -> int:
        recorded = header.metadata.get(MAX_SEQ_LENGTH_KEY) or header.arch_value("context_length")
        limit = int(recorded) if recorded else self.config.batch_tokens
        if self.config.max_tokens is not None:
            if self.config.max_tokens > limit:
                raise ConfigurationError(
                    f"max_tokens={self.config.max_tokens} exceeds the model's limit of {limit} tokens"
                )
            limit = self.config.max_tokens
        return max(1, min(limit, 1 << 16))


# One llama_cpp.Llama (weights + vocabulary) per file, shared by every instance that loads it; each instance
# decodes in a context of its own. Weights are read-only in llama.cpp, so contexts may share them across threads.
# Sharing keeps N workers from mapping the file N times, and each context reserves outputs for the texts one
# decode holds (n_seq_max) rather than llama-cpp-python's 256 x vocabulary-size logits buffer (30 MB here).
_shared: dict[tuple[str, int, bool], list[Any]] = {}  # key -> [Llama, users]
_shared_lock = threading.Lock()


def _open_llama(path: Path, cfg: ModelConfig) -> Any:
    """Load weights and vocabulary only (no context, no Python-side printing, no stream redirection).

    ``llama_cpp.Llama`` would print system info to ``sys.stderr`` (or, with ``verbose=False``, ``dup2`` the
    process's file descriptors); doing either from worker threads races with every other thread's output, and
    two concurrent loads could leave ``sys.stderr`` pointing at a discarded buffer. llama.cpp's own log goes
    through the log callback in ``_native``.
    """
    params = llama_cpp.llama_model_default_params()
    params.n_gpu_layers = cfg.n_gpu_layers
    params.use_mmap = cfg.use_mmap
    return LlamaModel(path_model=str(path), params=params, verbose=True)


def _shared_llama(key: tuple[str, int, bool], factory: Any) -> Any:
    with _shared_lock:
        entry = _shared.get(key)
        if entry is None:
            entry = _shared[key] = [factory(), 0]
        entry[1] += 1
        return entry[0]


def _release_llama(key: tuple[str, int, bool]) -> None:
    with _shared_lock:
        entry = _shared.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] <= 0:
            del _shared[key]
            entry[0].close()


def _new_context(llama: Any, cfg: ModelConfig, pooling: Pooling, budget: int, n_seq: int) -> Any:
    params = llama_cpp.llama_context_default_params()
    params.n_ctx = params.n_batch = params.n_ubatch = budget
    params.n_seq_max = n_seq
    params.n_threads = params.n_threads_batch = cfg.threads
    params.embeddings = True
    params.pooling_type = _LLAMA_POOLING[pooling]
    params.flash_attn_type = (
        llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED if cfg.flash_attn else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
    )
    params.kv_unified = True
    ctx = llama_cpp.llama_init_from_model(llama.model, params)
    if not ctx:
        raise RuntimeError("llama_init_from_model returned no context")
    return ctx
