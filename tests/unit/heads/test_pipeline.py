"""Which heads a model gets, from its load decisions and output options, and the pipeline run end to end."""

from __future__ import annotations

import numpy as np

from embellama import Pooling
from embellama.model.heads.base import ArrayOutput, Chain, Decoded
from embellama.model.heads.matryoshka import Truncate
from embellama.model.heads.native_rows import NativePooledRows
from embellama.model.heads.normalization import Normalize
from embellama.model.heads.pipeline import build_pipeline
from embellama.model.heads.pooling import Pool
from embellama.model.heads.rank_score import RankScores
from embellama.model.heads.token_rows import TokenRows


def test_a_reranker_reads_scores_and_keeps_them_raw() -> None:
    pipeline = build_pipeline(pooling=Pooling.RANK, native_pooling=True, n_embd=384, n_cls_out=1, dimensions=8)
    assert isinstance(pipeline.readout, RankScores) and pipeline.readout.width == 1
    assert pipeline.outputs == ()
    scores = np.array([[-3.0], [4.0]], dtype=np.float32)
    assert pipeline.finish(scores) is scores


def test_native_pooling_reads_pooled_rows_then_normalizes() -> None:
    pipeline = build_pipeline(pooling=Pooling.CLS, native_pooling=True, n_embd=4)
    assert type(pipeline.readout) is NativePooledRows and pipeline.readout.width == 4
    (norm,) = pipeline.outputs
    assert isinstance(norm, Normalize) and norm.mode == "l2"


def test_numpy_pooling_chains_token_rows_and_pooling() -> None:
    pipeline = build_pipeline(pooling=Pooling.MAX, native_pooling=False, n_embd=2, dimensions=1, normalize=False)
    assert isinstance(pipeline.readout, Chain)
    assert isinstance(pipeline.readout.first, TokenRows) and isinstance(pipeline.readout.second, Pool)
    (cut,) = pipeline.outputs
    assert isinstance(cut, Truncate) and cut.dimensions == 1
    tokens = np.array([[1.0, -2.0], [3.0, 4.0], [-5.0, 0.5]], dtype=np.float32)
    rows = pipeline.read(Decoded(ArrayOutput(tokens), [2, 1]))
    np.testing.assert_array_equal(rows, [[3.0, 4.0], [-5.0, 0.5]])
    np.testing.assert_array_equal(pipeline.finish(rows), [[3.0], [-5.0]])


def test_the_output_heads_follow_the_options() -> None:
    def outputs(**options: object) -> list[str]:
        pipeline = build_pipeline(pooling=Pooling.MEAN, native_pooling=True, n_embd=8, **options)  # type: ignore[arg-type]
        return [type(h).__name__ + (f":{h.mode}:{h.p}" if isinstance(h, Normalize) else "") for h in pipeline.outputs]

    assert outputs() == ["Normalize:l2:2.0"]
    assert outputs(normalize=False) == []
    assert outputs(normalization="none") == []
    assert outputs(dimensions=4, normalization="p_norm", norm_p=3.0) == ["Truncate", "Normalize:p_norm:3.0"]
    assert outputs(dimensions=4, normalization="max_abs") == ["Truncate", "Normalize:max_abs:2.0"]
