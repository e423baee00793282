"""Read-out head: the rows llama.cpp pooled itself (``mean``, ``cls``, ``last`` on an encoder)."""

from __future__ import annotations

import numpy as np

from embellama.errors import EmbeddingError
from embellama.model.heads.base import Decoded, FloatArray

__all__ = ["NativePooledRows"]


class NativePooledRows:
    """One row of ``width`` values per sequence, copied out of llama.cpp's pooled output."""

    what = "embedding"
    """What a row is, for the error naming a missing one."""
    unit = "sequence"
    """What a row belongs to, for the same error."""

    def __init__(self, width: int) -> None:
        self.width = width

    def __call__(self, decoded: Decoded, /) -> FloatArray:
        """The pooled row of each sequence of ``decoded``, in order.

        Raises:
            EmbeddingError: llama.cpp holds no pooled row for a sequence.
        """
        rows: FloatArray = np.empty((len(decoded.lengths), self.width), dtype=np.float32)
        for i in range(len(decoded.lengths)):
            row = decoded.output.sequence_embedding(i, self.width)
            if row is None:
                raise EmbeddingError(f"llama.cpp returned no {self.what} for {self.unit} {i}")
            rows[i] = row
        return rows
