"""The numpy pooling head: sentence-transformers' semantics over every token, special tokens included."""

from __future__ import annotations

import numpy as np
import pytest

from embellama import Pooling
from embellama.model.heads.pooling import Pool, pool_tokens

TOKENS = np.array([[1.0, -2.0], [3.0, 4.0], [5.0, 0.0], [-1.0, 2.0]], dtype=np.float32)


def test_pool_tokens_semantics() -> None:
    np.testing.assert_allclose(pool_tokens(TOKENS, Pooling.MEAN), [2.0, 1.0])
    np.testing.assert_allclose(pool_tokens(TOKENS, Pooling.MAX), [5.0, 4.0])
    np.testing.assert_allclose(pool_tokens(TOKENS, Pooling.MEAN_SQRT_LEN), [4.0, 2.0])
    np.testing.assert_allclose(pool_tokens(TOKENS, Pooling.CLS), [1.0, -2.0])
    np.testing.assert_allclose(pool_tokens(TOKENS, Pooling.LAST), [-1.0, 2.0])
    with pytest.raises(ValueError):
        pool_tokens(TOKENS, Pooling.MODEL)
    with pytest.raises(ValueError):
        pool_tokens(np.zeros((0, 2), dtype=np.float32), Pooling.MEAN)


def test_pool_head_gives_one_float32_row_per_sequence() -> None:
    rows = Pool(Pooling.MAX)([TOKENS[:1], TOKENS[1:]])
    assert rows.dtype == np.float32 and rows.shape == (2, 2)
    np.testing.assert_allclose(rows, [[1.0, -2.0], [5.0, 4.0]])
    np.testing.assert_allclose(Pool(Pooling.LAST)([TOKENS[:2], TOKENS[2:]]), [[3.0, 4.0], [-1.0, 2.0]])


@pytest.mark.parametrize("pooling", [Pooling.MODEL, Pooling.RANK])
def test_pool_head_refuses_poolings_it_cannot_compute(pooling: Pooling) -> None:
    with pytest.raises(ValueError, match=pooling.value):
        Pool(pooling)
