"""Output head: Matryoshka truncation, keeping the first N components of each vector. The pipeline normalizes
after it (with the configured mode), the order Matryoshka models are trained for."""

from __future__ import annotations

import numpy as np

from embellama.model.heads.base import FloatArray

__all__ = ["Truncate"]


class Truncate:
    """Keep the first ``dimensions`` components of each row (a row already that narrow is left as it is)."""

    def __init__(self, dimensions: int) -> None:
        if dimensions < 1:
            raise ValueError(f"dimensions must be >= 1, got {dimensions}")
        self.dimensions = dimensions

    def __call__(self, vectors: FloatArray, /) -> FloatArray:
        """The first ``dimensions`` columns of ``vectors``, contiguous."""
        if self.dimensions >= vectors.shape[-1]:
            return vectors
        return np.ascontiguousarray(vectors[..., : self.dimensions])
