"""Each normalization mode against llama.cpp's ``common_embd_normalize`` formula, written out here in float64."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from embellama.model.heads.normalization import Normalize


def reference(row: list[float], mode: str, p: float = 2.0) -> list[float]:
    """common_embd_normalize (llama.cpp common/common.cpp), one row in plain Python floats: -1 none; 0 max
    absolute scaled to 32760; 2 euclidean; other p: (sum |x|^p)^(1/p); a zero norm multiplies by 0."""
    if mode == "none":
        total = 1.0
    elif mode == "max_abs":
        total = max((abs(x) for x in row), default=0.0) / 32760.0
    elif mode == "l2":
        total = math.sqrt(sum(x * x for x in row))
    else:
        total = sum(abs(x) ** p for x in row) ** (1.0 / p)
    scale = 1.0 / total if total > 0.0 else 0.0
    return [x * scale for x in row]


ROWS = np.array([[3.0, -4.0, 0.5, 12.0], [0.0, 0.0, 0.0, 0.0], [-1e-3, 2e-3, 5e-4, 0.0]], dtype=np.float32)
CASES = [("l2", 2.0), ("max_abs", 2.0), ("p_norm", 1.0), ("p_norm", 2.0), ("p_norm", 3.0), ("p_norm", 0.5)]


@pytest.mark.parametrize(("mode", "p"), CASES)
def test_modes_match_the_llama_cpp_formula(mode: str, p: float) -> None:
    out = Normalize(mode, p)(ROWS)  # type: ignore[arg-type]
    assert out.dtype == np.float32 and out.shape == ROWS.shape
    expected = [reference([float(x) for x in row], mode, p) for row in ROWS]
    np.testing.assert_allclose(out, expected, rtol=2e-6, atol=1e-9)
    np.testing.assert_array_equal(out[1], 0.0)  # a zero vector stays zero, finite


def test_each_mode_reaches_its_target() -> None:
    np.testing.assert_allclose(np.abs(Normalize("max_abs")(ROWS)).max(axis=1), [32760.0, 0.0, 32760.0], rtol=1e-6)
    for p in (1.0, 3.0):
        out = Normalize("p_norm", p)(ROWS).astype(np.float64)
        np.testing.assert_allclose((np.abs(out) ** p).sum(axis=1) ** (1 / p), [1.0, 0.0, 1.0], rtol=1e-5)
    assert Normalize("none")(ROWS) is ROWS


def test_p_norm_of_2_is_l2() -> None:
    np.testing.assert_allclose(Normalize("p_norm", 2.0)(ROWS), Normalize("l2")(ROWS), rtol=1e-6, atol=1e-9)


def test_a_large_p_neither_overflows_nor_underflows() -> None:
    """(sum |x|^p) overflows for components above 1 and underflows below 1 once p is large; the head scales by the
    largest component first, so the p-norm approaches max|x|."""
    big = np.array([[1e4, 2e4, -3e4]], dtype=np.float32)
    small = big * np.float32(1e-8)
    for rows in (big, small):
        out = Normalize("p_norm", 200.0)(rows)
        assert np.isfinite(out).all()
        np.testing.assert_allclose(np.abs(out).max(), 1.0, rtol=1e-2)


@settings(max_examples=50, deadline=None)
@given(
    rows=arrays(np.int32, (3, 5), elements=st.integers(-(10**6), 10**6)).map(lambda a: a.astype(np.float32) / 1e3),
    mode=st.sampled_from(["l2", "max_abs", "p_norm"]),
    p=st.floats(0.5, 8.0),
)
def test_modes_match_the_formula_on_any_rows(rows: np.ndarray, mode: str, p: float) -> None:
    out = Normalize(mode, p)(rows)  # type: ignore[arg-type]
    expected = np.array([reference([float(x) for x in row], mode, p) for row in rows])
    scale = np.abs(expected).max(axis=1, keepdims=True, initial=0.0)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6 * float(scale.max(initial=1.0)))


def test_l2_clamps_a_tiny_norm_as_torch_does() -> None:
    """The one departure from llama.cpp, kept from before the modes existed: sentence-transformers' L2 (torch's
    ``F.normalize``) divides by at least 1e-12, so a vector with a smaller norm shrinks instead of growing."""
    tiny = np.array([[3e-14, 4e-14]], dtype=np.float32)
    np.testing.assert_allclose(Normalize("l2")(tiny), tiny / 1e-12, rtol=1e-6)
    np.testing.assert_allclose(Normalize("p_norm", 2.0)(tiny), [[0.6, 0.8]], rtol=1e-6)


def test_bad_modes_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown normalization"):
        Normalize("l1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="p-norm"):
        Normalize("p_norm", 0.0)
