"""Read-out head: pooling in numpy, over each sequence's token rows.

``mean``, ``cls`` and ``last`` normally run inside llama.cpp (:mod:`~embellama.model.heads.native_rows`); these
serve ``max`` and ``mean_sqrt_len`` (which llama.cpp lacks), every pooling of a decoder (whose texts may span
several decodes), and document the exact semantics, matching sentence-transformers' ``Pooling`` module: every token
of the sequence counts, special tokens included.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import numpy as np

from embellama.config import Pooling
from embellama.model.heads.base import FloatArray

__all__ = ["Pool", "pool_tokens"]


def pool_tokens(tokens: FloatArray, pooling: Pooling) -> FloatArray:
    """Pool one sequence's token embeddings (shape ``[n_tokens, dim]``) into one vector (shape ``[dim]``).

    Raises:
        ValueError: ``tokens`` is empty or not 2-D, or ``pooling`` is not computed from token rows (``model``,
            ``rank``).
    """
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


class Pool:
    """One pooled row per sequence, from each sequence's token rows (see :func:`pool_tokens`)."""

    def __init__(self, pooling: Pooling) -> None:
        if pooling in (Pooling.MODEL, Pooling.RANK):
            raise ValueError(f"pooling {pooling.value!r} cannot be computed from token embeddings")
        self.pooling = pooling

    def __call__(self, sequences: Sequence[FloatArray], /) -> FloatArray:
        """Pool each ``[n_tokens, dim]`` matrix of ``sequences`` into a row of a ``[len(sequences), dim]`` array."""
        dim = sequences[0].shape[1] if sequences else 0
        rows: FloatArray = np.empty((len(sequences), dim), dtype=np.float32)
        for i, tokens in enumerate(sequences):
            rows[i] = pool_tokens(tokens, self.pooling)
        return rows
