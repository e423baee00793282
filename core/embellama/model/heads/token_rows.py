"""Read-out head: each sequence's per-token matrix (what numpy pooling works on)."""

from __future__ import annotations

from embellama.errors import EmbeddingError
from embellama.model.heads.base import Decoded, FloatArray

__all__ = ["TokenRows"]


class TokenRows:
    """The ``[n_tokens, dim]`` token rows of each sequence: views into the decode's one per-token matrix."""

    def __init__(self, dim: int) -> None:
        self.dim = dim

    def __call__(self, decoded: Decoded, /) -> list[FloatArray]:
        """Split the decode's token rows by sequence, in order.

        Raises:
            EmbeddingError: the decode holds no token rows.
        """
        embedded = decoded.output.token_embeddings(sum(decoded.lengths), self.dim)
        if embedded is None:
            raise EmbeddingError("llama.cpp returned no token embeddings")
        out: list[FloatArray] = []
        start = 0
        for length in decoded.lengths:
            out.append(embedded[start : start + length])
            start += length
        return out
