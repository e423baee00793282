"""Read-out head of a reranker: each (query, document) pair's scores, the raw output of the model's
classification head (llama.cpp's RANK pooling); no output head changes them."""

from __future__ import annotations

from embellama.model.heads.native_rows import NativePooledRows

__all__ = ["RankScores"]


class RankScores(NativePooledRows):
    """``n_cls_out`` raw scores per pair (usually 1), read from llama.cpp's RANK-pooled output."""

    what = "score"
    unit = "pair"

    def __init__(self, n_cls_out: int) -> None:
        super().__init__(max(1, n_cls_out))
