"""Which heads a loaded model gets, decided from its configuration and what loading found out.

:func:`build_pipeline` puts them together once per load; the model's ``forward`` runs the read-out on what its
decodes left, and ``postprocess`` runs the output heads on each text's row (after a long text's chunk rows are
averaged, so a text is normalized once).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from embellama.config import Normalization, Pooling
from embellama.model.heads.base import Chain, Decoded, FloatArray, Head
from embellama.model.heads.matryoshka import Truncate
from embellama.model.heads.native_rows import NativePooledRows
from embellama.model.heads.normalization import Normalize
from embellama.model.heads.pooling import Pool
from embellama.model.heads.rank_score import RankScores
from embellama.model.heads.token_rows import TokenRows

__all__ = ["Pipeline", "build_pipeline"]


@dataclass(frozen=True)
class Pipeline:
    """A model's output stage: one read-out head, then output heads in order."""

    readout: Head[Decoded, FloatArray]
    """What a forward's decodes left → one raw row per sequence."""
    outputs: Sequence[Head[FloatArray, FloatArray]] = ()
    """Each text's raw row → the vector the caller gets (none for a reranker: its scores are raw)."""

    def read(self, decoded: Decoded) -> FloatArray:
        """One raw row per sequence of ``decoded``, in order."""
        return self.readout(decoded)

    def finish(self, rows: FloatArray) -> FloatArray:
        """Run the output heads on ``rows`` (one per text)."""
        for head in self.outputs:
            rows = head(rows)
        return rows


def build_pipeline(
    *,
    pooling: Pooling,
    native_pooling: bool,
    n_embd: int,
    n_cls_out: int = 1,
    dimensions: int | None = None,
    normalize: bool = True,
    normalization: Normalization = "l2",
    norm_p: float = 2.0,
) -> Pipeline:
    """The heads of a model with these load decisions and output options.

    Args:
        pooling: The resolved pooling (never ``MODEL``); ``RANK`` makes a reranker.
        native_pooling: Whether llama.cpp pools (an encoder with ``mean``, ``cls`` or ``last``); otherwise the
            token rows are pooled in numpy.
        n_embd: The model's embedding width.
        n_cls_out: A reranker's number of scores per pair.
        dimensions: Matryoshka truncation (None keeps every dimension).
        normalize: Whether vectors are normalized at all.
        normalization: How (see :mod:`~embellama.model.heads.normalization`).
        norm_p: The p of ``"p_norm"``.
    """
    if pooling is Pooling.RANK:
        return Pipeline(RankScores(n_cls_out))
    readout: Head[Decoded, FloatArray] = (
        NativePooledRows(n_embd) if native_pooling else Chain(TokenRows(n_embd), Pool(pooling))
    )
    outputs: list[Head[FloatArray, FloatArray]] = []
    if dimensions is not None:
        outputs.append(Truncate(dimensions))
    if normalize and normalization != "none":
        outputs.append(Normalize(normalization, norm_p))
    return Pipeline(readout, tuple(outputs))
