"""Planning a request and assembling its answer — the engine's only batching.

:func:`plan_request` validates every text once (absolute indices from the start), answers what it can from the
cache, and cuts the rest into even chunks, one share per worker. :func:`assemble` puts the workers' rows back in
order, fills the cache and builds the output. Both are generators that yield every :data:`SLICE` texts: the
sync API drives them straight through, the async API awaits between slices so a 20,000-text request never stalls
the event loop (the same code serves both, as httpx's auth flows do).
"""

from __future__ import annotations

from collections.abc import Generator, Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from .cache import EmbeddingCache
from .errors import ConfigurationError, InvalidInputError
from .texts import validate_text
from .types import BatchResult, Item, JobResult

__all__ = ["ROW_SLICE", "SLICE", "Output", "Plan", "assemble", "drive", "plan_request", "split"]

SLICE = 1024
"""Texts planned between two yields (validation and cache lookups of a slice take a few ms)."""

ROW_SLICE = 256
"""Rows converted to Python lists between two yields. Very large list answers also cost the garbage collector's
pauses (it scans the new lists while holding the GIL): for huge async batches prefer ``output="numpy"``."""

Output = Literal["list", "numpy"]
OnError = Literal["raise", "collect"]
Steps = Generator[None, None, Any]


@dataclass
class Plan:
    """How one request is answered: cached rows, and chunks of the rest for the workers."""

    n: int
    rows: npt.NDArray[np.float32]
    texts: list[Item]
    """Validated plain texts, or (query, text) pairs for a reranker ("" where a text was invalid)."""
    keys: list[Hashable | None]
    chunks: list[list[int]]
    """Absolute indices of the texts each job embeds."""
    collect: bool
    errors: dict[int, InvalidInputError] = field(default_factory=dict)
    single: bool = False
    """A lone text (``embed``): errors name no index."""
    truncated: dict[int, int] = field(default_factory=dict)
    """Texts the model cut to its limit: caller's index -> token count before the cut."""
    tokens: int = 0
    """Tokens of the request's valid texts (from the workers, or remembered by the cache): its usage."""

    @property
    def done_at_start(self) -> int:
        """Texts answered before any worker runs (cache hits and, when collecting, invalid texts)."""
        return self.n - sum(len(c) for c in self.chunks)

    def job_indices(self, chunk: list[int]) -> list[int | None]:
        """The index each text of ``chunk`` reports in errors."""
        return [None] * len(chunk) if self.single else list(chunk)


def drive(steps: Steps) -> Any:
    """Run a planning generator to its end in one go; return its value."""
    while True:
        try:
            next(steps)
        except StopIteration as stop:
            return stop.value


def plan_request(
    texts: Iterable[str],
    *,
    identity: Hashable,
    dims: int,
    cache: EmbeddingCache,
    on_error: OnError,
    n_workers: int,
    most: int,
    least: int,
    single: bool = False,
    prompt: str = "",
    pair_with: str | None = None,
) -> Generator[None, None, Plan]:
    """Validate, look up and split a request (a generator; see the module docstring).

    Args:
        texts: The caller's texts (any iterable, consumed once).
        identity: The serving model's identity and output options: the cache key prefix.
        dims: Width of a vector.
        cache: The engine's cache.
        on_error: ``"raise"``: the first invalid text raises here, before any work; ``"collect"``: it is recorded.
        n_workers, most, least: See :func:`split`.
        single: A lone text: errors name no index.
        prompt: Put in front of every text (a model prompt such as ``"query: "``).
        pair_with: A reranker's query: every text becomes a ``(query, text)`` pair.
    """
    if texts is None:
        raise InvalidInputError("expected a sequence of texts, got None")
    if isinstance(texts, (str, bytes)):
        raise InvalidInputError(f"expected a sequence of texts, got a single {type(texts).__name__}")
    if on_error not in ("raise", "collect"):
        raise ConfigurationError(f"on_error must be 'raise' or 'collect', got {on_error!r}")
    items = list(texts)
    n = len(items)
    plan = Plan(n, np.empty((n, dims), dtype=np.float32), [""] * n, [None] * n, [], on_error == "collect", {}, single)
    missing: list[int] = []
    for start in range(0, n, SLICE):
        for i in range(start, min(n, start + SLICE)):
            try:
                text = validate_text(items[i], None if single else i)
            except InvalidInputError as exc:
                if not plan.collect:
                    raise
                plan.errors[i] = exc
                continue
            if prompt:
                text = prompt + text
            item: Item = text if pair_with is None else (pair_with, text)
            plan.texts[i] = item
            key = plan.keys[i] = (identity, item)
            hit = cache.get_entry(key)
            if hit is None:
                missing.append(i)
                continue
            plan.rows[i] = hit[0]
            plan.tokens += hit[2]
            if hit[1] is not None:  # answered from the cache, but still the vector of a cut text: say so
                plan.truncated[i] = hit[1]
        yield
    plan.chunks = split(missing, n_workers, most, least)
    return plan


def split(indices: list[int], n_workers: int, most: int, least: int) -> list[list[int]]:
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


def assemble(plan: Plan, results: list[JobResult], output: Output, cache: EmbeddingCache) -> Steps:
    """Put the workers' rows in place, cache them, and build the caller's answer (a generator)."""
    if output not in ("list", "numpy"):
        raise ConfigurationError(f"output must be 'list' or 'numpy', got {output!r}")
    done = 0
    for chunk, result in zip(plan.chunks, results, strict=True):
        plan.rows[chunk] = result.vectors
        for position, err in result.errors.items():
            plan.errors[chunk[position]] = err
        for position, n_tokens in result.truncated.items():
            plan.truncated[chunk[position]] = n_tokens
        plan.tokens += result.tokens
        for position, i in enumerate(chunk):
            key = plan.keys[i]
            if position not in result.errors and key is not None:
                cache.put(key, plan.rows[i], result.truncated.get(position), result.token_counts[position])
        done += len(chunk)
        if done >= SLICE:
            done = 0
            yield
    vectors: Any
    if output == "numpy":
        vectors = plan.rows
    else:
        vectors = []
        for start in range(0, plan.n, ROW_SLICE):
            vectors.extend(plan.rows[start : start + ROW_SLICE].tolist())
            yield
    if plan.collect:
        embeddings = [None if i in plan.errors else vectors[i] for i in range(plan.n)]
        return BatchResult(embeddings, dict(sorted(plan.errors.items())))
    return vectors
