"""The native pooled-rows head on the default model: it reads llama.cpp's own pooled output, and that output is the
numpy pooling of the same decode's token rows."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import llama_cpp
import numpy as np
import pytest

from embellama import Pooling
from embellama.errors import EmbeddingError
from embellama.files.identity import file_identity
from embellama.model import native as _native
from embellama.model.heads.base import Chain, Decoded
from embellama.model.heads.native_rows import NativePooledRows
from embellama.model.heads.pooling import Pool
from embellama.model.heads.token_rows import TokenRows

TEXTS = ["a first sentence", "the second one is a little longer than the first", "third"]
NATIVE = {Pooling.MEAN: llama_cpp.LLAMA_POOLING_TYPE_MEAN, Pooling.CLS: llama_cpp.LLAMA_POOLING_TYPE_CLS}


@pytest.fixture(scope="module")
def weights(model_path: Path) -> Iterator[_native.NativeWeights]:
    w = _native.acquire_weights(model_path, file_identity(model_path), 0, True)
    yield w
    _native.release_weights(w)


def _decode(weights: _native.NativeWeights, pooling_type: int) -> tuple[_native.NativeContext, Decoded]:
    sequences = [np.asarray(weights.tokenize(t), dtype=np.int32) for t in TEXTS]
    context = _native.NativeContext(
        weights, n_tokens=128, n_seq=4, n_threads=1, pooling_type=pooling_type, flash_attn=True
    )
    batch = _native.DecodeBatch(128, 4)
    batch.fill(sequences)
    assert context.run(batch) == 0
    return context, Decoded(context, [len(s) for s in sequences])


@pytest.mark.parametrize("pooling", list(NATIVE))
def test_native_rows_are_the_pooled_token_rows(weights: _native.NativeWeights, pooling: Pooling) -> None:
    pooled_ctx, pooled = _decode(weights, NATIVE[pooling])
    tokens_ctx, tokens = _decode(weights, llama_cpp.LLAMA_POOLING_TYPE_NONE)
    try:
        rows = NativePooledRows(weights.n_embd)(pooled)
        reference = Chain(TokenRows(weights.n_embd), Pool(pooling))(tokens)
        assert rows.shape == (len(TEXTS), weights.n_embd) and rows.dtype == np.float32
        np.testing.assert_allclose(rows, reference, rtol=1e-4, atol=1e-5)
        assert not np.allclose(rows[0], rows[1], atol=1e-3)  # one row per sequence, not one row repeated
    finally:
        pooled_ctx.close()
        tokens_ctx.close()


def test_no_pooled_output_is_an_error(weights: _native.NativeWeights) -> None:
    context, decoded = _decode(weights, llama_cpp.LLAMA_POOLING_TYPE_NONE)
    try:
        with pytest.raises(EmbeddingError, match="no embedding for sequence 0"):
            NativePooledRows(weights.n_embd)(decoded)
    finally:
        context.close()
