"""Planning a request and assembling its answer — the engine's only batching.

:func:`plan_request` validates every text once (absolute indices from the start), answers what it can from the
cache, gives identical texts one slot (they share one vector), and cuts the rest into even chunks, one share per
worker. :func:`assemble` puts the workers' rows back in order, fills the cache and builds the output. Both are
generators that yield every :data:`SLICE` texts, steps of a request (:mod:`embellama.engine.request`): the sync API
drives them straight through, the async API lets the event loop run between slices so a 20,000-text request never
stalls it (the same code serves both, as httpx's auth flows do).

Nothing here builds ``prompt + text``: the prompt travels once per job and the model joins it as it tokenizes. A
text is known to the cache (and to duplicate detection) by a 32-byte BLAKE2b digest of the model identity, the
prompt and the text (:func:`key_prefix`), so no plan, cache entry or result keeps a text after its request.
"""

from __future__ import annotations

import hashlib
from collections.abc import Generator, Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from embellama.engine.cache import EmbeddingCache
from embellama.errors import ConfigurationError, InvalidInputError
from embellama.texts import encode_text
from embellama.types import BatchResult, Item, JobResult

__all__ = [
    "ROW_SLICE",
    "SLICE",
    "Output",
    "Plan",
    "assemble",
    "checked_tokens",
    "key_prefix",
    "plan_request",
    "split",
]

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
    """Validated plain texts (without the prompt), or (query, text) pairs for a reranker ("" where invalid)."""
    keys: list[bytes | None]
    """Each valid text's digest (see :func:`key_prefix`)."""
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
    prompt: str = ""
    """Put in front of every text by the model (once per job, never joined here)."""
    copies: dict[int, int] = field(default_factory=dict)
    """Texts identical to an earlier one of the request (same prompt and text): index -> that earlier index,
    whose vector (and error, cut, token count) it shares."""

    @property
    def done_at_start(self) -> int:
        """Texts answered before any worker runs (cache hits and their copies, and, when collecting, invalid
        texts)."""
        return self.n - sum(self.chunk_sizes())

    def chunk_sizes(self) -> list[int]:
        """Texts each chunk answers: its own and their copies."""
        sizes = [len(c) for c in self.chunks]
        if self.copies:
            where = {i: k for k, chunk in enumerate(self.chunks) for i in chunk}
            for first in self.copies.values():
                k = where.get(first)
                if k is not None:
                    sizes[k] += 1
        return sizes

    def job_indices(self, chunk: list[int]) -> list[int | None]:
        """The index each text of ``chunk`` reports in errors."""
        return [None] * len(chunk) if self.single else list(chunk)


def key_prefix(identity: Hashable, prompt: str = "", pair_with: str | None = None) -> Any:
    """A BLAKE2b hasher over what every text of a request shares: the model identity and output options, the
    prompt, and a reranker's query (each length-prefixed); a text's key is ``prefix.copy()`` updated with its UTF-8
    bytes, so keys of different identities, prompts or queries never collide by concatenation."""
    hasher = hashlib.blake2b(digest_size=32)
    parts = [repr(identity).encode("utf-8"), prompt.encode("utf-8")]
    if pair_with is not None:
        parts.append(pair_with.encode("utf-8"))
    for part in parts:
        hasher.update(len(part).to_bytes(8, "little"))
        hasher.update(part)
    return hasher


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
    """Validate, look up, de-duplicate and split a request (a generator; see the module docstring).

    Args:
        texts: The caller's texts (any iterable, consumed once).
        identity: The serving model's identity and output options (part of every key).
        dims: Width of a vector.
        cache: The engine's cache.
        on_error: ``"raise"``: the first invalid text raises here, before any work; ``"collect"``: it is recorded.
        n_workers, most, least: See :func:`split`.
        single: A lone text: errors name no index.
        prompt: Put in front of every text by the model (a model prompt such as ``"query: "``), already validated.
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
    plan.prompt = prompt
    copy = key_prefix(identity, prompt, pair_with).copy
    seen: dict[bytes, int] = {}  # key -> first index with it
    hit_tokens: dict[int, int] = {}  # token counts of the texts answered from the cache
    missing: list[int] = []
    for start in range(0, n, SLICE):
        for i in range(start, min(n, start + SLICE)):
            try:
                text, data = encode_text(items[i], None if single else i)  # validated, and the bytes to hash
            except InvalidInputError as exc:
                if not plan.collect:
                    raise
                plan.errors[i] = exc
                continue
            hasher = copy()
            hasher.update(data)
            key = hasher.digest()
            plan.texts[i] = text if pair_with is None else (pair_with, text)
            first = seen.get(key)
            if first is not None:
                plan.copies[i] = first
                plan.tokens += hit_tokens.get(first, 0)
                continue
            seen[key] = i
            plan.keys[i] = key
            hit = cache.get_entry(key)
            if hit is None:
                missing.append(i)
                continue
            plan.rows[i] = hit[0]
            plan.tokens += hit[2]
            hit_tokens[i] = hit[2]
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
    """Put the workers' rows in place, cache them, give each copy its text's answer, and build the caller's answer
    (a generator)."""
    if output not in ("list", "numpy"):
        raise ConfigurationError(f"output must be 'list' or 'numpy', got {output!r}")
    firsts = set(plan.copies.values())
    counts: dict[int, int] = {}  # token counts of the texts that have copies
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
            if i in firsts:
                counts[i] = result.token_counts[position]
        done += len(chunk)
        if done >= SLICE:
            done = 0
            yield
    for i, first in plan.copies.items():
        plan.rows[i] = plan.rows[first]  # the same vector, bit for bit
        plan.tokens += counts.get(first, 0)
        if first in plan.truncated:
            plan.truncated[i] = plan.truncated[first]
        if first in plan.errors:  # collecting: every index of a bad text has its error, naming it
            text = plan.texts[i]
            plan.errors[i] = plan.errors[first].at_index(i, text if isinstance(text, str) else text[1])
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


def checked_tokens(plan: Plan, chunks: list[list[int]], results: list[JobResult]) -> int:
    """Tokens of a request from check-only jobs over ``chunks``: each text's count, copies included."""
    counts: dict[int, int] = {}
    for chunk, result in zip(chunks, results, strict=True):
        counts.update(zip(chunk, result.token_counts, strict=True))
    return sum(counts.values()) + sum(counts.get(first, 0) for first in plan.copies.values())
