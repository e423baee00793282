"""Request and result types shared by the engine, the scheduler and the backends (no logic beyond their own).

A request is cut into :class:`Job` s; each job carries plain ``str`` texts with the caller's absolute index of
every text, so an error raised anywhere below the engine already names the position the caller knows, and the
request's prompt once (the model joins it to each text as it tokenizes it: no job holds prompt + text strings).
"""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from embellama.errors import InvalidInputError

__all__ = [
    "BatchResult",
    "Item",
    "Job",
    "JobResult",
    "ModelHealth",
    "ModelInfo",
    "Payload",
    "RankedDocument",
    "Reranking",
    "WorkerHealth",
]


@dataclass(frozen=True)
class ModelInfo:
    """What a loaded model is, as the engine reports it."""

    name: str
    path: str
    architecture: str
    dimensions: int
    native_dimensions: int
    max_tokens: int
    pooling: str
    model_pooling: str | None
    normalize: bool
    size_bytes: int
    fingerprint: str
    """Content hash of the whole GGUF file (see :func:`embellama.files.identity.file_fingerprint`)."""
    n_workers: int
    n_threads: int
    isolation: str
    family: str = ""
    """The model family detected from the GGUF (see :mod:`embellama.model.families`)."""
    kind: str = "embedding"
    """``"embedding"``, or ``"reranker"`` for a cross-encoder (scores pairs; ``dimensions`` is its score count)."""
    causal: bool = False
    """Decoder (causal attention) rather than encoder."""
    prompts: dict[str, str] = field(default_factory=dict)
    """Named prompts in effect (``"query"`` / ``"document"`` for RAG roles)."""
    add_eos: bool = False
    """Whether an end-of-sequence token ends every input."""
    context_mib: float = 0.0
    """Memory llama.cpp allocated for one context (compute buffers, KV cache, outputs), in MiB."""


@dataclass
class JobResult:
    """Vectors for the valid texts of a job (NaN rows where a text was invalid) and the per-position errors."""

    vectors: npt.NDArray[np.float32]
    errors: dict[int, InvalidInputError] = field(default_factory=dict)
    """Errors by position in the job (each error's ``index`` is the caller's absolute index)."""
    truncated: dict[int, int] = field(default_factory=dict)
    """Texts cut to the model's limit (``long_text_mode="truncate"``): position in the job -> token count before the
    cut."""
    token_counts: list[int] = field(default_factory=list)
    """Tokens of each text of the job (before any cut, special tokens included; 0 for an invalid one)."""

    @property
    def tokens(self) -> int:
        """Tokens of the job's valid texts."""
        return sum(self.token_counts)


Item = str | tuple[str, str]
"""One input: a text to embed, or a ``(query, document)`` pair for a reranker."""


class Payload(NamedTuple):
    """What a backend needs of a job (plain, picklable values)."""

    texts: list[Item]
    collect_errors: bool
    """Whether to return per-text errors beside the vectors instead of failing the job."""
    indices: list[int | None]
    """The caller's index of each text (None: a lone text, errors name no index)."""
    check_only: bool = False
    """Only check the texts (tokenize and apply the length policy, no decode)."""
    prompt: str = ""
    """Put in front of every text, as the model tokenizes it (checked once per round)."""


@dataclass
class Job:
    """Texts to embed and the future that receives a :class:`JobResult`."""

    texts: list[Item]
    collect_errors: bool = False
    indices: list[int | None] | None = None
    """The caller's index of each text (None: a lone text, errors name no index); defaults to the position."""
    future: Future[JobResult] = field(default_factory=Future)
    check_only: bool = False
    """Only check the texts (strict mode checks a whole request before embedding any of it)."""
    attempts: int = 0
    """How many times a process backend retried this job after its child died."""
    prompt: str = ""
    """Put in front of every text when the model tokenizes it."""

    def __post_init__(self) -> None:
        if self.indices is None:
            self.indices = list(range(len(self.texts)))

    def resolve(self, outcome: JobResult | BaseException) -> None:
        """Give the caller ``outcome``: a result, or an exception to raise."""
        if isinstance(outcome, BaseException):
            self.future.set_exception(outcome)
        else:
            self.future.set_result(outcome)

    def payload(self) -> Payload:
        """What a round needs of this job (plain, picklable values)."""
        assert self.indices is not None
        return Payload(self.texts, self.collect_errors, self.indices, self.check_only, self.prompt)


@dataclass
class BatchResult:
    """Result of ``embed_batch(..., on_error="collect")``: a vector per valid text, ``None`` per invalid one."""

    embeddings: list[Any]
    errors: dict[int, InvalidInputError] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Whether every text was embedded."""
        return not self.errors


@dataclass(frozen=True)
class RankedDocument:
    """One document of a reranking: its position in the caller's list, its score, and the document."""

    index: int
    score: float
    document: str


@dataclass(frozen=True)
class Reranking:
    """Result of ``rerank``: every document's score in document order, and the best ones sorted by score."""

    scores: list[float]
    """One score per document, in the order given (raw head output, or 0..1 with ``normalize=True``)."""
    top: list[RankedDocument]
    """Documents by descending score, at most ``top_n`` of them."""


@dataclass(frozen=True)
class WorkerHealth:
    """One worker of a model, as :meth:`~embellama.engine.engine.EmbeddingEngine.model_health` reports it."""

    pid: int | None
    """Process serving the worker's instance (None while its child process is dead or restarting)."""
    alive: bool
    """Whether the worker can serve a request now."""
    crashes: int = 0
    """Times its child process died or was killed as stuck (process isolation)."""
    restarts: int = 0
    """Times a fresh child process was started after one was lost."""
    last_error: str | None = None
    """What the requests of the last lost child failed with."""


@dataclass(frozen=True)
class ModelHealth:
    """The workers of one loaded model."""

    name: str
    workers: tuple[WorkerHealth, ...]

    @property
    def live(self) -> int:
        """Workers that can serve a request now."""
        return sum(w.alive for w in self.workers)

    @property
    def crashes(self) -> int:
        """Crashes over all workers."""
        return sum(w.crashes for w in self.workers)

    @property
    def restarts(self) -> int:
        """Restarts over all workers."""
        return sum(w.restarts for w in self.workers)

    @property
    def last_error(self) -> str | None:
        """The last error of a worker that has one."""
        errors = [w.last_error for w in self.workers if w.last_error]
        return errors[-1] if errors else None
