"""Validated, immutable configuration for models and the engine.

Every check here runs before any native call: a value or a combination that would make llama.cpp abort the
process (``GGML_ASSERT``) is refused with a :class:`~embellama.errors.ConfigurationError` instead.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Literal

from embellama.cpu import usable_cores
from embellama.errors import ConfigurationError
from embellama.migration import unknown_options_error

__all__ = [
    "DEFAULT_CACHE_BYTES",
    "MODEL_OPTIONS",
    "EngineConfig",
    "Isolation",
    "LongTextMode",
    "ModelConfig",
    "Normalization",
    "Pooling",
    "default_thread_count",
    "default_worker_count",
    "decode_defaults",
    "option_docs",
]

# llama.cpp's LLAMA_MAX_SEQ: more parallel sequences than this aborts context creation.
LLAMA_MAX_SEQ = 256

Isolation = Literal["thread", "process"]
LongTextMode = Literal["raise", "truncate", "mean"]
Normalization = Literal["l2", "max_abs", "p_norm", "none"]
NORMALIZATIONS: tuple[Normalization, ...] = ("l2", "max_abs", "p_norm", "none")


class Pooling(str, Enum):
    """How token embeddings become one vector per text.

    ``MODEL`` uses the pooling recorded in the GGUF (and a reranker's head when the GGUF has one). ``MEAN``,
    ``CLS`` and ``LAST`` run inside llama.cpp; ``MAX`` and ``MEAN_SQRT_LEN`` are computed in numpy from the token
    embeddings (as sentence-transformers does); ``RANK`` makes the model a reranker.
    """

    MODEL = "model"
    MEAN = "mean"
    CLS = "cls"
    LAST = "last"
    MAX = "max"
    MEAN_SQRT_LEN = "mean_sqrt_len"
    RANK = "rank"
    """A reranker (cross-encoder): the classification head over the first token, one score per (query, text)."""

    @classmethod
    def parse(cls, value: Pooling | str) -> Pooling:
        """Return the member for ``value`` (a member or its string), or raise ``ConfigurationError``."""
        if isinstance(value, cls):
            return value
        try:
            return cls(str(value).lower())
        except ValueError:
            valid = ", ".join(repr(p.value) for p in cls)
            raise ConfigurationError(f"unknown pooling {value!r}; valid values are {valid}") from None

    @property
    def is_native(self) -> bool:
        """Whether llama.cpp pools this way itself (otherwise token embeddings are read and pooled in numpy)."""
        return self not in (Pooling.MAX, Pooling.MEAN_SQRT_LEN)


MAX_DEFAULT_WORKERS = 4
"""Most model instances :func:`default_worker_count` picks (each holds its own context and compute buffers)."""


def default_worker_count() -> int:
    """Model instances per model by default: one per usable core, at most :data:`MAX_DEFAULT_WORKERS`.

    Usable cores are :func:`~embellama.cpu.usable_cores`: the affinity mask, or the cgroup CPU quota when it is
    smaller (a container with ``--cpus=2`` on a 64-core host plans 2 workers x 1 thread, not 4 x 16).

    One single-thread instance per core is faster than one instance with every core, and keeps its speed beside a
    competing busy process (measurements: docs/performance.md, "Why the defaults").
    """
    return max(1, min(MAX_DEFAULT_WORKERS, usable_cores()))


def default_thread_count(n_workers: int = 1) -> int:
    """Threads per model instance: the usable cores (affinity and cgroup quota) split between the workers, at
    least one.

    llama.cpp's worker threads spin while waiting, so using every logical CPU collapses throughput as soon as
    another process competes (measurements: docs/performance.md, "Why the defaults").
    """
    return max(1, usable_cores() // max(1, n_workers))


CPU_DECODE = {"batch_tokens": 256, "max_texts_per_decode": 8}
"""Decode shape defaults on CPU (best on the default model: docs/performance.md, "Why the defaults")."""
GPU_DECODE = {"batch_tokens": 2048, "max_texts_per_decode": 64}
"""Decode shape defaults with layers offloaded to a GPU: large decodes keep the device busy (not yet verified on
a GPU)."""


def decode_defaults(*, gpu: bool) -> dict[str, int]:
    """Defaults of the options that depend on the device: ``n_workers``, ``batch_tokens``,
    ``max_texts_per_decode``. On CPU, one single-thread model instance per core with small decodes; with layers on
    a GPU, one instance (one context feeds the device) with large decodes."""
    if gpu:
        return {"n_workers": 1, **GPU_DECODE}
    return {"n_workers": default_worker_count(), **CPU_DECODE}


def _check_positive(name: str, value: int | None, *, allow_none: bool = True, maximum: int | None = None) -> None:
    if value is None:
        if not allow_none:
            raise ConfigurationError(f"{name} is required")
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigurationError(f"{name} must be an integer, got {value!r}")
    if value < 1:
        raise ConfigurationError(f"{name} must be >= 1, got {value}")
    if maximum is not None and value > maximum:
        raise ConfigurationError(f"{name} must be <= {maximum}, got {value}")


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Everything needed to load one embedding model and serve it.

    Each option's documentation is declared with it, as ``metadata["doc"]`` of its dataclass field (read with
    :func:`option_docs`): the options table of the docs (``docs/options.md``) and the LangChain and LlamaIndex
    adapters' field descriptions are made from it. An unknown keyword raises
    :class:`~embellama.errors.ConfigurationError`, naming its replacement when it is another library's keyword or
    a removed option (``truncate=True`` is ``long_text_mode="truncate"``; see :mod:`embellama.migration`).

    Example:
        >>> ModelConfig(model_path="model.gguf", model_name="minilm", pooling="mean")  # doctest: +SKIP
    """

    model_path: str | Path = field(metadata={"doc": "Path to the GGUF file."})

    model_name: str | None = field(
        default=None,
        metadata={"doc": "Name the engine registers the model under. Defaults to the file name without ``.gguf``."},
    )

    pooling: Pooling | str = field(
        default=Pooling.MODEL,
        metadata={
            "doc": """Pooling strategy: ``"model"`` (the GGUF's own), ``"mean"``, ``"cls"``, ``"last"``, ``"max"``,
            ``"mean_sqrt_len"``, or ``"rank"`` for a reranker (a :class:`Pooling` or its string). Defaults to the
            model's own."""
        },
    )

    normalize: bool = field(
        default=True,
        metadata={
            "doc": """Normalize each vector (L2 unless ``normalization`` says otherwise); False returns them as
            pooled. Defaults to True."""
        },
    )

    normalization: Normalization = field(
        default="l2",
        metadata={
            "doc": """How vectors are normalized when ``normalize`` is True (llama.cpp's ``--embd-normalize``):
            ``"l2"`` (Euclidean length 1), ``"max_abs"`` (largest component ±32760, the int16 range), ``"p_norm"``
            (p-norm 1, p from ``norm_p``) or ``"none"``. A zero vector stays zero. Defaults to ``"l2"``."""
        },
    )

    norm_p: float = field(
        default=2.0,
        metadata={
            "doc": """The p of ``normalization="p_norm"``: vectors are divided by ``(sum |x|^p)^(1/p)``. Defaults
            to 2.0."""
        },
    )

    dimensions: int | None = field(
        default=None,
        metadata={
            "doc": """Matryoshka truncation: keep the first N dimensions (then re-normalize if ``normalize``).
            Defaults to all."""
        },
    )

    max_tokens: int | None = field(
        default=None,
        metadata={
            "doc": """Input limit in tokens, at most the model's own. Defaults to the model's limit
            (sentence-transformers' ``max_seq_length`` when recorded in the GGUF, else the training context)."""
        },
    )

    batch_tokens: int = field(  # type: ignore[assignment]  # resolved in __post_init__
        default=None,
        metadata={
            "doc": """Token budget of one decode (llama.cpp's ``n_batch`` = ``n_ubatch``). Raised at load to the
            input limit when that is larger, since a non-causal sequence must fit in one decode. Defaults to 256 on
            CPU, 2048 with layers offloaded to a GPU (``n_gpu_layers != 0``): on CPU llama.cpp keeps a
            vocabulary-sized output row per token of the largest decode, and a GPU needs large decodes to be busy
            (see docs/performance.md for the measurements; GPU defaults are not verified on a GPU yet). Decoders'
            budgets are also capped by their vocabulary (see :mod:`embellama.model.sizing`)."""
        },
    )

    max_texts_per_decode: int = field(  # type: ignore[assignment]  # resolved in __post_init__
        default=None,
        metadata={
            "doc": """How many texts are packed into one decode at most (llama.cpp's ``n_seq_max``). Defaults to 8
            on CPU, 64 with layers offloaded to a GPU (at most ``batch_tokens``); docs/performance.md has the
            measurements behind the CPU default (the GPU default is not verified on a GPU yet)."""
        },
    )

    n_threads: int | None = field(
        default=None,
        metadata={
            "doc": """Threads of each model instance. Defaults to the usable cores (affinity mask, or the cgroup
            CPU quota if smaller) divided by ``n_workers``."""
        },
    )

    n_workers: int = field(  # type: ignore[assignment]  # resolved in __post_init__
        default=None,
        metadata={
            "doc": """Model instances serving this model, each owned by its own thread. Defaults to one per usable
            core, at most 4 (1 when ``n_gpu_layers != 0``). Usable cores are the affinity mask or the cgroup CPU
            quota, whichever is smaller (see :func:`default_worker_count`), so each instance runs one thread; on a
            GPU a single context with large decodes suits the device (GPU defaults are not verified on a GPU
            yet)."""
        },
    )

    n_gpu_layers: int = field(
        default=0,
        metadata={
            "doc": """Layers to offload to a GPU (-1: all). Must be 0 on a CPU-only build (``make demo CUDA=1`` or
            ``scripts/build_llama_cpp.py --cuda`` builds llama.cpp with CUDA; GPU use is not verified yet).
            Defaults to 0."""
        },
    )

    use_mmap: bool = field(default=True, metadata={"doc": "Memory-map the model file. Defaults to True."})

    flash_attn: bool = field(
        default=True,
        metadata={
            "doc": "Use flash attention: decode cost then grows linearly with the texts per decode. Defaults to True."
        },
    )

    isolation: Isolation = field(
        default="thread",
        metadata={
            "doc": """``"thread"``: the model runs in this process. ``"process"``: in a child process, so a native
            crash becomes a :class:`~embellama.errors.ModelCrashedError` and the worker restarts. Defaults to
            ``"thread"``."""
        },
    )

    crash_retries: int = field(
        default=0,
        metadata={
            "doc": "With process isolation: how many times a request is retried on a restarted worker after a crash."
        },
    )

    request_timeout: float | None = field(
        default=300.0,
        metadata={
            "doc": """With process isolation: seconds a request may go without progress (a finished decode) before
            its worker process is killed and the request fails with :class:`~embellama.errors.ModelTimeoutError`;
            also bounds a child's load. ``None`` waits forever. In-process (``isolation="thread"``) a native call
            cannot be interrupted, so this does not apply there. Defaults to 300."""
        },
    )

    long_text_mode: LongTextMode = field(
        default="raise",
        metadata={
            "doc": """What happens to a text over the input limit: ``"raise"``
            (:class:`~embellama.errors.InvalidInputError`), ``"truncate"`` (cut to the limit, keeping the closing
            special token) or ``"mean"`` (cut into chunks at token boundaries, embed each, average them weighted by
            length — gpt4all's ``long_text_mode="mean"``). A reranker cuts the end of the document with either of
            the last two, never the query. The LangChain and LlamaIndex adapters default to ``"truncate"``, with
            one warning per call that cuts texts. Defaults to ``"raise"``: nothing is cut silently."""
        },
    )

    prompts: dict[str, str] | None = field(
        default=None,
        metadata={
            "doc": """Named prompts (sentence-transformers' convention); ``"query"`` and ``"document"`` are what RAG
            adapters use. Defaults to the model family's (see :mod:`embellama.model.families`); ``{}`` means
            none."""
        },
    )

    add_eos: bool | None = field(
        default=None,
        metadata={
            "doc": """Append the end-of-sequence token to every input (last-token embedders such as
            Qwen3-Embedding need it). Defaults to the model family's rule, else the GGUF tokenizer's."""
        },
    )

    verbose: bool = field(
        default=False,
        metadata={
            "doc": """Let llama.cpp print its own log to stderr (otherwise it goes to the ``embellama.llama_cpp``
            logger). Defaults to False."""
        },
    )

    def __new__(cls, *args: Any, **options: Any) -> ModelConfig:
        # before the dataclass's __init__: an unknown keyword (a removed option such as ``truncate``, or another
        # library's) is a ConfigurationError naming its replacement, not a TypeError
        unknown = {k: v for k, v in options.items() if k not in _FIELD_NAMES}
        if unknown:
            raise unknown_options_error(unknown, _FIELD_NAMES, where="ModelConfig")
        return super().__new__(cls)

    def __post_init__(self) -> None:
        if not isinstance(self.model_path, (str, Path)) or not str(self.model_path):
            raise ConfigurationError(f"model_path must be a non-empty path, got {self.model_path!r}")
        object.__setattr__(self, "model_path", Path(self.model_path).expanduser())
        object.__setattr__(self, "pooling", Pooling.parse(self.pooling))
        if self.model_name is None:
            name = Path(self.model_path).name
            object.__setattr__(self, "model_name", name[:-5] if name.lower().endswith(".gguf") else name)
        elif not isinstance(self.model_name, str) or not self.model_name:
            raise ConfigurationError(f"model_name must be a non-empty string, got {self.model_name!r}")
        _check_positive("dimensions", self.dimensions)
        _check_positive("max_tokens", self.max_tokens)
        if isinstance(self.n_gpu_layers, bool) or not isinstance(self.n_gpu_layers, int) or self.n_gpu_layers < -1:
            raise ConfigurationError(f"n_gpu_layers must be an integer >= -1, got {self.n_gpu_layers!r}")
        for name, value in decode_defaults(gpu=self.n_gpu_layers != 0).items():
            if getattr(self, name) is None:
                if name == "max_texts_per_decode" and isinstance(self.batch_tokens, int):
                    value = max(1, min(value, self.batch_tokens))  # a smaller budget the user chose bounds it
                object.__setattr__(self, name, value)
        _check_positive("batch_tokens", self.batch_tokens, allow_none=False, maximum=1 << 16)
        _check_positive("max_texts_per_decode", self.max_texts_per_decode, allow_none=False, maximum=LLAMA_MAX_SEQ)
        _check_positive("n_threads", self.n_threads, maximum=1024)
        _check_positive("n_workers", self.n_workers, allow_none=False, maximum=64)
        if self.max_texts_per_decode > self.batch_tokens:
            # llama.cpp asserts n_ubatch >= n_seq_max when pooling
            raise ConfigurationError(
                f"max_texts_per_decode ({self.max_texts_per_decode}) must not exceed batch_tokens "
                f"({self.batch_tokens}): llama.cpp aborts when n_ubatch < n_seq_max"
            )
        if self.isolation not in ("thread", "process"):
            raise ConfigurationError(f"isolation must be 'thread' or 'process', got {self.isolation!r}")
        if isinstance(self.crash_retries, bool) or not isinstance(self.crash_retries, int) or self.crash_retries < 0:
            raise ConfigurationError(f"crash_retries must be an integer >= 0, got {self.crash_retries!r}")
        timeout = self.request_timeout
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout < float("inf")
        ):
            raise ConfigurationError(f"request_timeout must be a positive number of seconds or None, got {timeout!r}")
        if self.long_text_mode not in ("raise", "truncate", "mean"):
            raise ConfigurationError(
                f"long_text_mode must be 'raise', 'truncate' or 'mean', got {self.long_text_mode!r}"
            )
        if self.prompts is not None:
            if not isinstance(self.prompts, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in self.prompts.items()
            ):
                raise ConfigurationError(f"prompts must map prompt names to strings, got {self.prompts!r}")
            object.__setattr__(self, "prompts", dict(self.prompts))
        self._check_normalization()
        if self.add_eos is not None and not isinstance(self.add_eos, bool):
            raise ConfigurationError(f"add_eos must be a bool or None, got {self.add_eos!r}")
        for flag in ("normalize", "use_mmap", "flash_attn", "verbose"):
            if not isinstance(getattr(self, flag), bool):
                raise ConfigurationError(f"{flag} must be a bool, got {getattr(self, flag)!r}")

    def _check_normalization(self) -> None:
        if self.normalization not in NORMALIZATIONS:
            raise ConfigurationError(
                "normalization must be one of "
                + ", ".join(repr(m) for m in NORMALIZATIONS)
                + f", got {self.normalization!r}"
            )
        p = self.norm_p
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p < float("inf"):
            raise ConfigurationError(f"norm_p must be a finite number > 0, got {p!r}")
        object.__setattr__(self, "norm_p", float(p))
        if not self.normalize and self.normalization not in ("l2", "none"):
            raise ConfigurationError(
                f"normalization={self.normalization!r} contradicts normalize=False (no normalization); "
                "pass normalize=True, or normalization='none'"
            )

    @property
    def name(self) -> str:
        """The registered name (``model_name`` after defaulting)."""
        assert self.model_name is not None
        return self.model_name

    @property
    def threads(self) -> int:
        """Threads per instance after defaulting."""
        return self.n_threads or default_thread_count(self.n_workers)

    def replace(self, **changes: Any) -> ModelConfig:
        """Return a copy with ``changes`` applied (and validated again)."""
        return dataclasses.replace(self, **changes)

    def output_options(self) -> tuple[str, bool, int | None, int | None, str, bool | None, str, float]:
        """The options that change a text's vector; part of every cache key."""
        assert isinstance(self.pooling, Pooling)
        return (
            self.pooling.value,
            self.normalize,
            self.dimensions,
            self.max_tokens,
            self.long_text_mode,
            self.add_eos,
            self.normalization,
            self.norm_p,
        )


def _model_options() -> dict[str, Any]:
    options: dict[str, Any] = {}
    for f in dataclasses.fields(ModelConfig):
        if f.name in ("model_path", "model_name"):
            continue
        options[f.name] = None if f.default is dataclasses.MISSING else f.default
    return options


MODEL_OPTIONS: dict[str, Any] = _model_options()
"""Every option of :class:`ModelConfig` besides the file and the name, with its default (``None`` where the
default is computed, e.g. ``n_workers``): the keywords :class:`~embellama.engine.client.EmbeddingClient` and the
ingest workers take. The LangChain and LlamaIndex adapters write the same options out as typed fields (a test keeps
them equal to these fields)."""


def option_docs(config: type[ModelConfig | EngineConfig] = ModelConfig) -> dict[str, str]:
    """The documentation of each option of ``config`` (:class:`ModelConfig` or :class:`EngineConfig`), declared
    with its field as ``metadata["doc"]``, on one line: the docs' options table and the adapters' field
    descriptions are made from it."""
    docs = {}
    for f in dataclasses.fields(config):
        if "doc" not in f.metadata:  # a developer's slip: fail at import, naming the field
            raise TypeError(f"{config.__name__}.{f.name} declares no field(metadata={{'doc': ...}})")
        docs[f.name] = " ".join(f.metadata["doc"].split())
    return docs


_FIELD_NAMES = frozenset(f.name for f in dataclasses.fields(ModelConfig))


DEFAULT_CACHE_BYTES = 32 * 1024 * 1024
"""The embedding cache's default bound: 32 MiB (~17,000 384-dimension vectors, ~2,000 of 4,096 dimensions)."""


@dataclass(frozen=True, kw_only=True)
class EngineConfig:
    """Engine-wide settings (each documented in its field's ``metadata["doc"]``, as :class:`ModelConfig`'s)."""

    cache_bytes: int = field(
        default=DEFAULT_CACHE_BYTES,
        metadata={
            "doc": """Most bytes the embedding cache holds: each vector's bytes plus a fixed overhead per entry (400
            bytes; the texts are never kept, only a digest of them), least recently used first out. 0 disables the
            cache. Defaults to 32 MiB (~17,000 384-dimension vectors)."""
        },
    )

    cache_size: int | None = field(
        default=None,
        metadata={
            "doc": """Most entries the cache holds, on top of ``cache_bytes`` (0 disables the cache). Defaults to
            None (bounded by bytes only)."""
        },
    )

    chunk_size: int = field(
        default=64,
        metadata={
            "doc": """Most texts per job: a batch is split into jobs so short queries are not stuck behind it, and
            into smaller ones (never below one decode's worth) so that every worker of the model gets a share.
            Defaults to 64."""
        },
    )

    def __post_init__(self) -> None:
        for name in ("cache_bytes", "cache_size"):
            value = getattr(self, name)
            if value is None and name == "cache_size":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigurationError(f"{name} must be an integer >= 0, got {value!r}")
        _check_positive("chunk_size", self.chunk_size, allow_none=False)
