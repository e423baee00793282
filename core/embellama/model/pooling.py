"""Pooling, normalization and Matryoshka truncation, in numpy.

``mean``, ``cls`` and ``last`` normally run inside llama.cpp; the numpy versions here serve ``max`` and
``mean_sqrt_len`` (which llama.cpp lacks) and document the exact semantics, matching sentence-transformers'
``Pooling`` module: every token of the sequence counts, special tokens included.
"""

from __future__ import annotations

from typing import cast

import numpy as np
import numpy.typing as npt

from embellama.config import Pooling

__all__ = ["normalize", "pool_tokens", "postprocess", "truncate_dimensions"]

FloatArray = npt.NDArray[np.float32]


def pool_tokens(tokens: FloatArray, pooling: Pooling) -> FloatArray:
    """Pool one sequence's token embeddings (shape ``[n_tokens, dim]``) into one vector (shape ``[dim]``)."""
    if tokens.ndim != 2 or tokens.shape[0] == 0:
        raise ValueError(f"expected a non-empty [n_tokens, dim] array, got shape {tokens.shape}")
    if pooling is Pooling.MEAN:
        pooled = tokens.mean(axis=0, dtype=np.float32)
    elif pooling is Pooling.MAX:
        pooled = tokens.max(axis=0)
    elif pooling is Pooling.MEAN_SQRT_LEN:
        pooled = tokens.sum(axis=0, dtype=np.float32) / np.float32(np.sqrt(tokens.shape[0]))
    elif pooling is Pooling.CLS:
        pooled = tokens[0].copy()
    elif pooling is Pooling.LAST:
        pooled = tokens[-1].copy()
    else:
        raise ValueError(f"pooling {pooling.value!r} cannot be computed from token embeddings")
    return cast(FloatArray, pooled.astype(np.float32, copy=False))


def normalize(vectors: FloatArray) -> FloatArray:
    """L2-normalize each row; an all-zero row stays zero (the norm is clamped at 1e-12, as torch does)."""
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return cast(FloatArray, (vectors / np.maximum(norms, 1e-12)).astype(np.float32, copy=False))


def truncate_dimensions(vectors: FloatArray, dimensions: int | None) -> FloatArray:
    """Keep the first ``dimensions`` components of each row (Matryoshka); ``None`` keeps all."""
    if dimensions is None or dimensions >= vectors.shape[-1]:
        return vectors
    return np.ascontiguousarray(vectors[..., :dimensions])


def postprocess(vectors: FloatArray, *, dimensions: int | None, normalize_output: bool) -> FloatArray:
    """Truncate to ``dimensions`` then normalize if asked: the order Matryoshka models are trained for."""
    vectors = truncate_dimensions(vectors, dimensions)
    return normalize(vectors) if normalize_output else vectors
