"""Matryoshka truncation: the first N components; the pipeline re-normalizes after it with the configured mode."""

from __future__ import annotations

import numpy as np
import pytest

from embellama import Pooling
from embellama.model.heads.matryoshka import Truncate
from embellama.model.heads.pipeline import build_pipeline


def test_truncate_keeps_the_first_dimensions_contiguous() -> None:
    v = np.arange(12, dtype=np.float32).reshape(3, 4)
    out = Truncate(2)(v)
    np.testing.assert_array_equal(out, v[:, :2])
    assert out.flags.c_contiguous
    assert Truncate(4)(v) is v and Truncate(9)(v) is v
    with pytest.raises(ValueError):
        Truncate(0)


def test_matryoshka_truncates_then_renormalizes_with_the_mode() -> None:
    v = np.array([[3.0, 4.0, 12.0]], dtype=np.float32)

    def finish(**options: object) -> np.ndarray:
        pipeline = build_pipeline(pooling=Pooling.MEAN, native_pooling=True, n_embd=3, dimensions=2, **options)  # type: ignore[arg-type]
        return pipeline.finish(v)

    np.testing.assert_allclose(finish(), [[0.6, 0.8]])
    np.testing.assert_allclose(finish(normalize=False), [[3.0, 4.0]])
    np.testing.assert_allclose(finish(normalization="max_abs"), [[24570.0, 32760.0]])
    np.testing.assert_allclose(finish(normalization="p_norm", norm_p=1.0), [[3 / 7, 4 / 7]], rtol=1e-6)
