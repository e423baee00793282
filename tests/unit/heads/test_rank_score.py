"""The reranker's read-out head: each pair's ``n_cls_out`` raw scores, as the pooled output holds them."""

from __future__ import annotations

import numpy as np
import pytest

from embellama.errors import EmbeddingError
from embellama.model.heads.base import ArrayOutput, Decoded
from embellama.model.heads.rank_score import RankScores


def test_scores_are_copied_per_pair_at_the_head_width() -> None:
    pooled = np.array([[2.5, -1.0], [-0.5, 3.0], [7.0, 0.0]], dtype=np.float32)
    single = RankScores(1)(Decoded(ArrayOutput(pooled=pooled), [4, 5, 6]))
    assert single.shape == (3, 1) and single.dtype == np.float32
    np.testing.assert_array_equal(single[:, 0], [2.5, -0.5, 7.0])
    both = RankScores(2)(Decoded(ArrayOutput(pooled=pooled), [4, 5, 6]))
    np.testing.assert_array_equal(both, pooled)
    assert not np.shares_memory(both, pooled)  # llama.cpp's buffer is reused by the next decode
    assert RankScores(0).width == 1  # a head that records no class count scores one value


def test_a_missing_score_names_the_pair() -> None:
    pooled = np.ones((1, 1), dtype=np.float32)
    with pytest.raises(EmbeddingError, match="no score for pair 1"):
        RankScores(1)(Decoded(ArrayOutput(pooled=pooled), [3, 3]))
