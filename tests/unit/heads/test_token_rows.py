"""The token-rows head splits a decode's per-token matrix by sequence; ``ArrayOutput`` holds such rows in numpy."""

from __future__ import annotations

import numpy as np
import pytest

from embellama import Pooling
from embellama.errors import EmbeddingError
from embellama.model.heads.base import ArrayOutput, Chain, Decoded
from embellama.model.heads.pooling import Pool
from embellama.model.heads.token_rows import TokenRows

MATRIX = np.arange(12, dtype=np.float32).reshape(6, 2)


def test_token_rows_are_views_split_by_length() -> None:
    parts = TokenRows(2)(Decoded(ArrayOutput(MATRIX), [1, 3, 2]))
    assert [p.shape for p in parts] == [(1, 2), (3, 2), (2, 2)]
    np.testing.assert_array_equal(np.concatenate(parts), MATRIX)
    np.testing.assert_array_equal(parts[1], MATRIX[1:4])
    assert all(np.shares_memory(p, MATRIX) for p in parts)  # no copy of the decode's rows


def test_token_rows_then_pooling() -> None:
    rows = Chain(TokenRows(2), Pool(Pooling.MEAN))(Decoded(ArrayOutput(MATRIX), [2, 4]))
    np.testing.assert_allclose(rows, [MATRIX[:2].mean(axis=0), MATRIX[2:].mean(axis=0)])


def test_missing_or_misshapen_token_rows_are_errors() -> None:
    with pytest.raises(EmbeddingError, match="no token embeddings"):
        TokenRows(2)(Decoded(ArrayOutput(), [6]))
    with pytest.raises(ValueError, match=r"\(6, 2\)"):
        TokenRows(2)(Decoded(ArrayOutput(MATRIX), [2, 2]))  # 4 tokens asked of 6 rows
