"""Output head: normalization of each vector, the modes of llama.cpp's ``common_embd_normalize`` (llama-server's
``--embd-normalize``).

- ``"l2"``: divide by the Euclidean norm (clamped at 1e-12, as torch does);
- ``"max_abs"``: scale so that the largest component is ±32760 (the int16 range): divide by ``max|x| / 32760``;
- ``"p_norm"``: divide by ``(sum |x|^p)^(1/p)``;
- ``"none"``: leave the vector as it is.

A zero vector stays zero in every mode (llama.cpp multiplies by 0 when the norm is 0).
"""

from __future__ import annotations

from typing import cast

import numpy as np

from embellama.config import NORMALIZATIONS, Normalization
from embellama.model.heads.base import FloatArray

__all__ = ["INT16_SCALE", "Normalize"]

INT16_SCALE = 32760.0
"""The largest component of a ``"max_abs"``-normalized vector (llama.cpp's int16 range)."""


class Normalize:
    """Normalize each row of a ``[n, dim]`` array with ``mode`` (``p`` is the p of ``"p_norm"``)."""

    def __init__(self, mode: Normalization = "l2", p: float = 2.0) -> None:
        if mode not in NORMALIZATIONS:
            raise ValueError(f"unknown normalization {mode!r}")
        if mode == "p_norm" and not 0 < p < float("inf"):
            raise ValueError(f"the p of a p-norm must be finite and > 0, got {p!r}")
        self.mode = mode
        self.p = p

    def __call__(self, vectors: FloatArray, /) -> FloatArray:
        """The rows of ``vectors``, normalized (a new array; ``"none"`` returns ``vectors`` itself)."""
        if self.mode == "none":
            return vectors
        if self.mode == "l2":
            norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
            return cast(FloatArray, (vectors / np.maximum(norms, 1e-12)).astype(np.float32, copy=False))
        magnitudes = np.abs(vectors.astype(np.float64))
        largest = magnitudes.max(axis=-1, keepdims=True, initial=0.0)
        if self.mode == "max_abs":
            norms = largest / INT16_SCALE
        else:  # (sum |x|^p)^(1/p), computed as max|x| * (sum (|x|/max|x|)^p)^(1/p): no overflow for a large p
            ratios = np.divide(magnitudes, largest, out=np.zeros_like(magnitudes), where=largest > 0)
            norms = largest * (ratios**self.p).sum(axis=-1, keepdims=True) ** (1.0 / self.p)
        scale = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
        return cast(FloatArray, (vectors * scale).astype(np.float32))
