"""``EmbeddingModel``: one model instance (shared weights + its own context) implementing the model contract.

The scheduler drives it through :class:`~embellama.model.contract.EncoderModel`: ``prepare_input`` (validate the
length and tokenize), ``plan`` (pack prepared texts into decodes), ``forward`` (decode, then the read-out head: one
row per text) and ``postprocess`` (the output heads: Matryoshka truncation, normalization); the heads are
:mod:`embellama.model.heads`. An ``EmbeddingModel`` is **not thread-safe** (llama.cpp contexts are
not): the engine gives each instance to one worker thread for its whole life. Use it directly only from a single
thread.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import llama_cpp
import numpy as np
import numpy.typing as npt

from embellama.config import ModelConfig, Pooling
from embellama.errors import ConfigurationError, EmbeddingError, EmbellamaError, InvalidInputError, ModelLoadError
from embellama.files.gguf import MAX_SEQ_LENGTH_KEY, GGUFHeader, check_model_file, read_header
from embellama.files.identity import file_fingerprint, file_identity
from embellama.model import llama_log as _llama_log
from embellama.model import native as _native
from embellama.model.batching import plan_decodes
from embellama.model.contract import Prepared, run_round
from embellama.model.families import ModelFamily, detect_family, is_causal
from embellama.model.heads.base import ArrayOutput, Decoded
from embellama.model.heads.pipeline import Pipeline, build_pipeline
from embellama.model.sizing import ENCODER_DEFAULT_LIMIT, DecodeShape, check_memory, decode_shape, estimate_memory
from embellama.model.wordpiece import WordPieceTokenizer
from embellama.texts import validate_text
from embellama.types import Item, ModelInfo, Payload

__all__ = ["EmbeddingModel", "validate_text"]

logger = logging.getLogger(__name__)

_LLAMA_POOLING = {
    Pooling.MEAN: llama_cpp.LLAMA_POOLING_TYPE_MEAN,
    Pooling.CLS: llama_cpp.LLAMA_POOLING_TYPE_CLS,
    Pooling.LAST: llama_cpp.LLAMA_POOLING_TYPE_LAST,
    Pooling.MAX: llama_cpp.LLAMA_POOLING_TYPE_NONE,
    Pooling.MEAN_SQRT_LEN: llama_cpp.LLAMA_POOLING_TYPE_NONE,
    Pooling.RANK: llama_cpp.LLAMA_POOLING_TYPE_RANK,
}
_GGUF_POOLING = {1: Pooling.MEAN, 2: Pooling.CLS, 3: Pooling.LAST, 4: Pooling.RANK}
# general.file_type values of unquantized weights: F32, F16, BF16
_UNQUANTIZED_FILE_TYPES = {0, 1, 32}

_llama_log.install_log_handler()

# printable ASCII plus \t \n \r: llama.cpp's BERT tokenizer agrees with Hugging Face's on exactly these
_PLAIN_ASCII = re.compile(r"[\x20-\x7e\t\n\r]*")


def _vocab_size(header: GGUFHeader) -> int:
    tokens = header.metadata.get("tokenizer.ggml.tokens")
    if isinstance(tokens, list):
        return len(tokens)
    match = re.fullmatch(r"<array\[(\d+)\]>", str(tokens))
    return int(match.group(1)) if match else 0


class EmbeddingModel:
    """One loaded GGUF embedding model.

    Example:
        >>> with EmbeddingModel(ModelConfig(model_path="model.gguf")) as model:  # doctest: +SKIP
        ...     vectors = model.embed(["hello", "world"])
    """

    def __init__(self, config: ModelConfig) -> None:
        self.config = config
        self._weights: _native.NativeWeights | None = None
        self._context: _native.NativeContext | None = None
        self._batch: _native.DecodeBatch | None = None
        self._header: GGUFHeader | None = None
        self._pooling: Pooling | None = None
        self._limit = 0
        self._n_embd = 0
        self._budget = 0
        self._size = 0
        self._fingerprint = ""
        self._wordpiece_tokenizer: WordPieceTokenizer | None = None
        self._family: ModelFamily | None = None
        self._shape: DecodeShape | None = None
        self._native_pooling = True
        self._add_eos: bool | None = None
        self._buffers_mib: dict[str, float] = {}
        self._heads: Pipeline | None = None

    # ----------------------------------------------------------------- lifecycle
    def load(self) -> EmbeddingModel:
        """Load the model (idempotent). Every check that can fail runs before llama.cpp touches the file.

        Raises:
            ModelNotFoundError: the file does not exist.
            ModelLoadError: not a loadable GGUF embedding model, a crash-prone build for its weight type, the
                file changed while loading, or the process ran out of file descriptors.
            ConfigurationError: options that do not fit this model.
        """
        if self._weights is not None:
            return self
        try:
            self._load()
        except OSError as exc:
            if isinstance(exc, EmbellamaError):  # ModelNotFoundError is a FileNotFoundError too
                raise
            if exc.errno in (errno.EMFILE, errno.ENFILE):
                raise ModelLoadError(
                    f"cannot load {self.config.model_path}: too many open files ({exc.strerror}); raise the limit "
                    "(ulimit -n) or close unused engines"
                ) from None
            raise ModelLoadError(f"cannot read {self.config.model_path}: {exc}") from None
        return self

    def _load(self) -> None:
        cfg = self.config
        path = Path(cfg.model_path)
        check_model_file(path)
        header = read_header(path)
        if cfg.n_gpu_layers != 0 and not _native.supports_gpu_offload():
            raise ConfigurationError(
                f"n_gpu_layers={cfg.n_gpu_layers} but this llama-cpp-python build has no GPU support; use 0"
            )
        family = detect_family(header.metadata)
        pooling = self._resolve_pooling(header, family)
        file_type = header.metadata.get("general.file_type")
        if file_type is not None and file_type not in _UNQUANTIZED_FILE_TYPES and cfg.isolation == "thread":
            risk = _native.amx_crash_risk()
            if risk:
                raise ModelLoadError(f"refusing to load quantized model {path.name}: {risk}")
        self._check_dimensions(family)
        limit = self._input_limit(header)
        shape = decode_shape(
            causal=is_causal(header.metadata),
            limit=limit,
            batch_tokens=cfg.batch_tokens,
            max_texts=cfg.max_texts_per_decode,
            n_vocab=_vocab_size(header),
        )
        check_memory(
            cfg.name,
            estimate_memory(header.metadata, shape, flash_attn=cfg.flash_attn),
            n_workers=cfg.n_workers,
            limit=limit,
        )
        # decoders pool in numpy (a text may span several decodes); encoders natively where llama.cpp can
        native = pooling.is_native and not shape.causal
        identity = file_identity(path)
        fingerprint = file_fingerprint(path)
        _llama_log.clear_native_errors()
        weights: _native.NativeWeights | None = None
        if cfg.verbose:
            _llama_log.set_echo(True)
        buffers = _llama_log.measure_buffers()
        try:
            weights = _native.acquire_weights(path, identity, cfg.n_gpu_layers, cfg.use_mmap)
            if file_identity(path) != identity:
                raise ModelLoadError(f"{path} was replaced while it was loading; load it again")
            if cfg.dimensions is not None and cfg.dimensions > weights.n_embd:
                raise ConfigurationError(f"dimensions={cfg.dimensions} exceeds the model's {weights.n_embd} dimensions")
            context = _native.NativeContext(
                weights,
                n_tokens=shape.n_ubatch,
                n_seq=shape.n_seq,
                n_ctx=shape.n_ctx,
                n_threads=cfg.threads,
                pooling_type=_LLAMA_POOLING[pooling] if native else llama_cpp.LLAMA_POOLING_TYPE_NONE,
                flash_attn=cfg.flash_attn,
            )
        except BaseException as exc:
            if weights is not None:
                _native.release_weights(weights)
            if cfg.verbose:
                _llama_log.set_echo(False)
            if isinstance(exc, (ModelLoadError, ConfigurationError)) or not isinstance(exc, Exception):
                raise
            detail = _llama_log.recent_native_errors()
            raise ModelLoadError(
                f"llama.cpp could not load {path}: {exc}" + (f" ({detail})" if detail else "")
            ) from None
        self._weights, self._context, self._header, self._pooling = weights, context, header, pooling
        self._family, self._shape, self._native_pooling = family, shape, native
        self._buffers_mib = dict(buffers)
        self._batch = _native.DecodeBatch(shape.n_ubatch, shape.n_seq)
        self._n_embd, self._limit, self._budget = weights.n_embd, limit, shape.n_ctx
        self._size, self._fingerprint = identity.size, fingerprint
        self._add_eos = cfg.add_eos if cfg.add_eos is not None else family.add_eos
        if self._add_eos is None:
            self._add_eos = weights.add_eos
        logger.debug(
            "loaded %s (%s, family %s, %s, %d dims, limit %d tokens, pooling %s, %d threads, buffers %s MiB)",
            path.name,
            header.architecture,
            family.name,
            "causal" if shape.causal else "bidirectional",
            self._n_embd,
            limit,
            pooling.value,
            cfg.threads,
            self._buffers_mib,
        )

    def unload(self) -> None:
        """Free the context and release the shared weights (idempotent)."""
        weights, context = self._weights, self._context
        self._weights = self._context = self._batch = None
        self._heads = None
        if context is not None:
            context.close()
        if weights is not None:
            _native.release_weights(weights)
            if self.config.verbose:
                _llama_log.set_echo(False)

    @property
    def is_loaded(self) -> bool:
        """Whether the native model is loaded."""
        return self._weights is not None

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
    def _require(self) -> _native.NativeWeights:
        if self._weights is None:
            raise EmbeddingError(f"model {self.config.name!r} is not loaded")
        return self._weights

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
    def output_width(self) -> int:
        """Columns of a returned row: the embedding width, or a reranker's number of scores (usually 1)."""
        weights = self._require()
        return max(1, weights.n_cls_out) if self.is_reranker else self.embedding_dimensions

    @property
    def is_reranker(self) -> bool:
        """Whether this is a reranker (cross-encoder): it scores (query, text) pairs instead of embedding texts."""
        return self._pooling is Pooling.RANK

    @property
    def max_sequence_length(self) -> int:
        """Most tokens one input may have, special tokens included."""
        self._require()
        return self._limit

    @property
    def model_size(self) -> int:
        """Size of the model file in bytes (as loaded)."""
        return self._size or Path(self.config.model_path).stat().st_size

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
        """Content hash of the loaded model file (see :func:`embellama.files.identity.file_fingerprint`)."""
        self._require()
        return self._fingerprint

    @property
    def metadata(self) -> dict[str, Any]:
        """The GGUF's metadata (long arrays summarized)."""
        self._require()
        assert self._header is not None
        return dict(self._header.metadata)

    def info(self) -> ModelInfo:
        """Describe this loaded model."""
        cfg = self.config
        model_pooling = self.model_pooling
        return ModelInfo(
            name=cfg.name,
            path=str(cfg.model_path),
            architecture=self.architecture,
            dimensions=self.output_width,
            native_dimensions=self.native_dimensions,
            max_tokens=self.max_sequence_length,
            pooling=self.pooling.value,
            model_pooling=model_pooling.value if model_pooling else None,
            normalize=cfg.normalize,
            size_bytes=self.model_size,
            fingerprint=self.fingerprint,
            n_workers=cfg.n_workers,
            n_threads=cfg.threads,
            isolation=cfg.isolation,
            family=self.family.name,
            kind="reranker" if self.is_reranker else "embedding",
            causal=self.causal,
            prompts=dict(self.prompts),
            add_eos=bool(self._add_eos),
            context_mib=round(sum(self._buffers_mib.values()), 1),
        )

    @property
    def family(self) -> ModelFamily:
        """The model family detected from the GGUF's metadata (see :mod:`embellama.model.families`)."""
        self._require()
        assert self._family is not None
        return self._family

    @property
    def causal(self) -> bool:
        """Whether the model attends causally (a decoder); encoders attend both ways."""
        self._require()
        assert self._shape is not None
        return self._shape.causal

    @property
    def prompts(self) -> dict[str, str]:
        """Named prompts in effect: the configuration's, else the family's."""
        if self.config.prompts is not None:
            return dict(self.config.prompts)
        return dict(self.family.prompts)

    @property
    def buffers_mib(self) -> dict[str, float]:
        """What llama.cpp allocated for this instance's context, by kind (compute, kv, output), in MiB."""
        return dict(self._buffers_mib)

    # ----------------------------------------------------------------- tokens
    def tokenize(self, text: str) -> list[int]:
        """Token ids of ``text`` with the model's special tokens (e.g. [CLS] ... [SEP]); never truncated.

        BERT vocabularies: plain printable ASCII goes through llama.cpp's tokenizer (identical to BERT's there,
        checked by a property test); anything else through :class:`~embellama.model.wordpiece.WordPieceTokenizer`,
        because llama.cpp's drops characters BERT keeps (Hangul jamo, Indic vowel signs, control characters).
        """
        weights = self._require()
        assert self._header is not None
        if self._header.metadata.get("tokenizer.ggml.model") == "bert" and not _PLAIN_ASCII.fullmatch(text):
            tokens = self._wordpiece().encode(text)
        else:
            tokens = weights.tokenize(text)
        if self._add_eos and not weights.add_eos and weights.eos >= 0:
            tokens.append(weights.eos)  # e.g. Qwen3-Embedding GGUFs that do not set add_eos_token
        elif self._add_eos is False and weights.add_eos and tokens and tokens[-1] == weights.eos:
            tokens.pop()
        return tokens

    def _wordpiece(self) -> WordPieceTokenizer:
        if self._wordpiece_tokenizer is None:  # built on first use: ~0.2 s for a 30k vocabulary
            weights, meta = self._require(), self.metadata
            self._wordpiece_tokenizer = WordPieceTokenizer(
                weights.vocabulary(),
                lowercase=bool(meta.get("tokenizer.ggml.normalizer.lowercase", True)),
                cls_id=int(meta.get("tokenizer.ggml.bos_token_id", 101)),
                sep_id=int(meta.get("tokenizer.ggml.seperator_token_id", meta.get("tokenizer.ggml.eos_token_id", 102))),
                unk_id=int(meta.get("tokenizer.ggml.unknown_token_id", 100)),
            )
        return self._wordpiece_tokenizer

    # ----------------------------------------------------------------- the model contract
    def check_prompt(self, prompt: str) -> None:
        """Refuse a prompt that alone reaches the input limit (it would leave no room for any text: in strict mode
        every text would fail, cut every text would embed as the prompt alone).

        Raises:
            InvalidInputError: ``subject="prompt"``, with its token count and the limit.
        """
        n_tokens = len(self.tokenize(prompt))
        if n_tokens >= self._limit:
            raise InvalidInputError(
                f"{n_tokens} tokens (special tokens included) reach the model's limit of {self._limit} tokens and "
                "leave no room for the text; use a shorter prompt",
                n_tokens=n_tokens,
                limit=self._limit,
                model_name=self.config.name,
                subject="prompt",
            )

    def prepare_input(self, text: str | tuple[str, str], prompt: str = "") -> Prepared:
        """The model contract's first step: tokens for one text after the long-text policy, and the count before.

        ``prompt`` goes in front of the text: the two are joined here, one text at a time, and tokenized together
        (exactly the tokens of ``prompt + text``), so no request holds a joined copy of every text. A reranker
        takes ``(query, document)`` pairs (see :meth:`prepare_pair`) and no prompt.

        Raises:
            InvalidInputError: empty after tokenization, or over the limit with ``long_text_mode="raise"`` (no
                index).
        """
        if isinstance(text, tuple):
            return self.prepare_pair(*text)
        tokens = self.tokenize(prompt + text if prompt else text)
        n_tokens = len(tokens)
        if not tokens:
            raise InvalidInputError("text produces no tokens", model_name=self.config.name)
        if n_tokens <= self._limit:
            return Prepared(np.asarray(tokens, dtype=np.int32), n_tokens)
        mode = self.config.long_text_mode
        if mode == "raise":
            raise InvalidInputError(
                f"{n_tokens} tokens exceed the model's limit of {self._limit} "
                "(pass long_text_mode='truncate' to cut long inputs, or long_text_mode='mean' to average their chunks)",
                n_tokens=n_tokens,
                limit=self._limit,
                model_name=self.config.name,
            )
        head, body, tail = self._split_specials(tokens)
        room = self._limit - len(head) - len(tail)
        if room < 1:  # a limit shorter than the special tokens: keep the closing ones
            return Prepared(np.asarray((head + tail)[-self._limit :], dtype=np.int32), n_tokens)
        if mode == "truncate":
            return Prepared(np.asarray(head + body[:room] + tail, dtype=np.int32), n_tokens)
        chunks = tuple(np.asarray(head + body[i : i + room] + tail, dtype=np.int32) for i in range(0, len(body), room))
        return Prepared(chunks[0], n_tokens, chunks)

    def prepare_pair(self, query: str, document: str) -> Prepared:
        """Tokens of a (query, document) pair as the model's tokenizer joins them: BERT ``[CLS] q [SEP] d [SEP]``,
        XLM-RoBERTa ``<s> q </s></s> d </s>``. An over-long pair loses the end of its document (never the query)
        unless the long-text policy is ``"raise"``."""
        weights = self._require()
        assert self._header is not None
        if not self.is_reranker:
            raise ConfigurationError(f"model {self.config.name!r} is an embedding model, not a reranker")
        first = self.tokenize(query)
        second = self.tokenize(document)
        joiner = [] if self._header.metadata.get("tokenizer.ggml.model") == "bert" else [weights.eos]
        head, _, _ = self._split_specials(second)
        pair = first + joiner + second[len(head) :]
        if len(pair) <= self._limit:
            return Prepared(np.asarray(pair, dtype=np.int32), len(pair))
        _, body, tail = self._split_specials(second)
        room = self._limit - len(first) - len(joiner) - len(tail)
        if self.config.long_text_mode == "raise" or room < 1:
            where = "the query alone" if room < 1 else "the pair"
            raise InvalidInputError(
                f"{where} has {len(first) if room < 1 else len(pair)} tokens, over the model's limit of "
                f"{self._limit}" + ("" if room < 1 else " (pass long_text_mode='truncate' to cut the document)"),
                n_tokens=len(pair),
                limit=self._limit,
                model_name=self.config.name,
            )
        return Prepared(np.asarray(first + joiner + body[:room] + tail, dtype=np.int32), len(pair))

    def _split_specials(self, tokens: list[int]) -> tuple[list[int], list[int], list[int]]:
        """Leading BOS/[CLS] and closing EOS/[SEP] tokens, kept on every cut or chunk, and the text between."""
        weights = self._weights
        assert weights is not None
        head = tokens[:1] if weights.add_bos and tokens[0] == weights.bos else []
        tail = tokens[-1:] if (self._add_eos or weights.add_sep) and len(tokens) > len(head) else []
        return head, tokens[len(head) : len(tokens) - len(tail)], tail

    def plan(self, lengths: Sequence[int]) -> list[list[int]]:
        """Group prepared texts into decodes that fit this instance's context."""
        assert self._batch is not None
        return plan_decodes(lengths, max_tokens=self._budget, max_texts=len(self._batch.seq_values))

    def forward(self, sequences: list[npt.NDArray[np.int32]]) -> npt.NDArray[np.float32]:
        """Run one group of ``sequences`` (from :meth:`plan`), then the read-out head: one raw (not yet normalized)
        row per sequence."""
        return self._pipeline().read(self._decode(sequences))

    def _pipeline(self) -> Pipeline:
        """This load's heads (see :func:`~embellama.model.heads.pipeline.build_pipeline`), built on first use."""
        if self._heads is None:
            weights, cfg = self._require(), self.config
            assert self._pooling is not None
            self._heads = build_pipeline(
                pooling=self._pooling,
                native_pooling=self._native_pooling,
                n_embd=self._n_embd,
                n_cls_out=weights.n_cls_out,
                dimensions=cfg.dimensions,
                normalize=cfg.normalize,
                normalization=cfg.normalization,
                norm_p=cfg.norm_p,
            )
        return self._heads

    def _decode(self, sequences: list[npt.NDArray[np.int32]]) -> Decoded:
        """Decode ``sequences``. An encoder sees them in one decode, whose output stays in llama.cpp's context. A
        decoder's group is fed in decodes of ``n_ubatch`` tokens, each continuing the sequences where the last one
        stopped (their memory holds the rest), and its token rows are gathered after each."""
        context, batch = self._context, self._batch
        if context is None or batch is None or self._shape is None:
            raise EmbeddingError(f"model {self.config.name!r} is not loaded")
        lengths = [len(s) for s in sequences]
        if self._shape.causal:
            return Decoded(ArrayOutput(self._stream(context, batch, sequences)), lengths)
        n = batch.fill(sequences)
        rc = context.run(batch)
        if rc != 0:
            raise EmbeddingError(f"llama_decode failed with code {rc} ({n} tokens, {len(sequences)} texts)")
        return Decoded(context, lengths)

    def _stream(
        self, context: _native.NativeContext, batch: _native.DecodeBatch, sequences: list[npt.NDArray[np.int32]]
    ) -> npt.NDArray[np.float32]:
        """Feed a decoder's group in decodes of at most ``n_ubatch`` tokens; return the token rows of every
        sequence, one sequence after the other (``[sum of lengths, dim]``)."""
        dim, capacity = self._n_embd, batch.capacity
        lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
        offsets = (np.cumsum(lengths) - lengths).tolist()
        out: npt.NDArray[np.float32] = np.empty((int(lengths.sum()), dim), dtype=np.float32)
        cursor = [0] * len(sequences)
        first = True
        while any(c < len(s) for c, s in zip(cursor, sequences, strict=True)):
            runs: list[npt.NDArray[np.int32]] = []
            starts: list[int] = []
            ids: list[int] = []
            room = capacity
            for i, seq in enumerate(sequences):
                if room == 0:
                    break
                take = min(room, len(seq) - cursor[i])
                if take > 0:
                    runs.append(seq[cursor[i] : cursor[i] + take])
                    starts.append(cursor[i])
                    ids.append(i)
                    room -= take
            n = batch.fill(runs, starts=starts, seq_ids=ids)
            rc = context.run(batch, clear=first)
            first = False
            if rc != 0:
                raise EmbeddingError(f"llama_decode failed with code {rc} ({n} tokens, {len(runs)} runs)")
            embedded = context.token_embeddings(n, dim)
            if embedded is None:
                raise EmbeddingError("llama.cpp returned no token embeddings")
            offset = 0
            for run, start, i in zip(runs, starts, ids, strict=True):
                out[offsets[i] + start : offsets[i] + start + len(run)] = embedded[offset : offset + len(run)]
                offset += len(run)
                cursor[i] = start + len(run)
        return out

    def postprocess(self, rows: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """The output heads: Matryoshka truncation, then normalization, as configured (a reranker's raw scores
        pass through)."""
        return self._pipeline().finish(rows)

    # ----------------------------------------------------------------- direct use
    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """Embed ``texts``: one row per text, in order. Raises ``InvalidInputError`` for the first bad text.

        Runs the same round as the engine (long-text policy, chunk averaging, EOS rule included), in this thread.
        """
        plain: list[Item] = [validate_text(text, i) for i, text in enumerate(texts)]
        (outcome,) = run_round(self, [Payload(plain, False, list(range(len(plain))))])
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome.vectors

    def embed_tokens(self, sequences: Sequence[npt.NDArray[np.int32]]) -> npt.NDArray[np.float32]:
        """Embed already-prepared token sequences (see :meth:`prepare_input`); rows follow the input order."""
        self._require()
        out = np.empty((len(sequences), self._n_embd), dtype=np.float32)
        for group in self.plan([len(s) for s in sequences]):
            out[group] = self.forward([sequences[i] for i in group])
        return self.postprocess(out)

    def set_threads(self, n_threads: int) -> None:
        """Use ``n_threads`` for the next decodes (cheap; a no-op when unchanged)."""
        if self._context is not None:
            self._context.set_threads(n_threads)

    # ----------------------------------------------------------------- config resolution
    def _resolve_pooling(self, header: GGUFHeader, family: ModelFamily) -> Pooling:
        requested = Pooling.parse(self.config.pooling)
        if requested is Pooling.RANK and not header.has_classifier and header.arch_value("pooling_type") != 4:
            raise ConfigurationError(
                f"pooling='rank' needs a classification head, and {Path(self.config.model_path).name} has none "
                "(it is an embedding model)"
            )
        if requested is not Pooling.MODEL:
            return requested
        value = int(header.arch_value("pooling_type") or 0)
        if value == 4 and not header.has_classifier:
            raise ModelLoadError(
                f"{header.architecture} model declares RANK pooling (a reranker) but has no classification head "
                "(no cls.output tensors): llama.cpp could not score with it"
            )
        if value == 4 or header.has_classifier:  # converters write no pooling type for BERT/XLM-R classifiers
            return Pooling.RANK
        if family.pooling is not None and (family.override_gguf_pooling or value not in _GGUF_POOLING):
            return Pooling.parse(family.pooling)
        if value not in _GGUF_POOLING:
            raise ConfigurationError(
                f"the model records no pooling type ({header.architecture}); pass pooling= one of "
                + ", ".join(repr(p.value) for p in Pooling if p is not Pooling.MODEL)
            )
        return _GGUF_POOLING[value]

    def _check_dimensions(self, family: ModelFamily) -> None:
        dims = self.config.dimensions
        if dims is not None and family.dimensions and dims not in family.dimensions:
            logger.warning(
                "dimensions=%d is not one of the sizes %s family %r was trained for (Matryoshka): quality may drop",
                dims,
                list(family.dimensions),
                family.name,
            )

    def _input_limit(self, header: GGUFHeader) -> int:
        """The input limit: max_tokens if given, else the recorded max_seq_length, else the training context capped
        at :data:`~embellama.model.sizing.ENCODER_DEFAULT_LIMIT` (a 32k-context decoder is not given 32k per text).

        Whatever the metadata records, the limit never exceeds the model's position table
        (:attr:`~embellama.files.gguf.GGUFHeader.position_rows`) or trained context (``{arch}.context_length``): a token
        past the table makes llama.cpp abort the process (``GGML_ASSERT`` in ``get_rows``). A recorded
        ``max_seq_length`` above that is clamped with a warning; ``max_tokens`` above it is a ``ConfigurationError``.
        """
        path = Path(self.config.model_path)
        trained = _positive_int(header, f"{header.architecture}.context_length", path)
        recorded = _positive_int(header, MAX_SEQ_LENGTH_KEY, path)
        positions = header.position_rows
        ceilings = [(n, what) for n, what in ((trained, "trained context"), (positions, "position table")) if n]
        ceiling, source = min(ceilings) if ceilings else (None, "")
        if recorded and ceiling and recorded > ceiling:
            logger.warning(
                "%s records %s=%d but the model's %s holds %d positions: inputs are limited to %d tokens",
                path.name,
                MAX_SEQ_LENGTH_KEY,
                recorded,
                source,
                ceiling,
                ceiling,
            )
            recorded = ceiling
        if recorded:
            limit = recorded
        elif ceiling:
            limit = ceiling
            if self.config.max_tokens is None:
                return min(limit, ENCODER_DEFAULT_LIMIT)
        else:
            limit = self.config.batch_tokens
        if self.config.max_tokens is not None:
            if self.config.max_tokens > limit:
                where = f" ({source}: {ceiling} positions)" if limit == ceiling else ""
                raise ConfigurationError(
                    f"max_tokens={self.config.max_tokens} exceeds the model's limit of {limit} tokens{where}"
                )
            limit = self.config.max_tokens
        return max(1, min(limit, 1 << 16))


def _positive_int(header: GGUFHeader, key: str, path: Path) -> int | None:
    """The integer metadata value ``key`` (None when absent or 0); any other type or a negative value is a
    ``ModelLoadError`` (a limit read from a float or a string would make no sense)."""
    value = header.metadata.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ModelLoadError(f"metadata key {key!r} in {path} is {value!r}, not a token count")
    return value or None
