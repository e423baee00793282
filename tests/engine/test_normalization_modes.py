"""Normalization modes end to end on the default model: each mode's vector is the raw (``normalize=False``) vector
scaled as llama.cpp's ``common_embd_normalize`` does, and the cache keeps the modes apart."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from embellama import EmbeddingEngine, ModelConfig

TEXT = "Normalization only scales a vector; its direction stays."
MODES: dict[str, dict[str, Any]] = {
    "raw": {"normalize": False},
    "l2": {},
    "max_abs": {"normalization": "max_abs"},
    "p3": {"normalization": "p_norm", "norm_p": 3.0},
    "p1": {"normalization": "p_norm", "norm_p": 1.0},
    "none": {"normalization": "none"},
    "max_abs64": {"normalization": "max_abs", "dimensions": 64},
}


@pytest.fixture(scope="module")
def served(model_path: Path) -> Iterator[tuple[EmbeddingEngine, dict[str, np.ndarray]]]:
    """``TEXT`` embedded by one model per mode, in this order, in one engine whose cache is on (a key that left the
    mode or its p out would hand a later mode an earlier mode's vector)."""
    with EmbeddingEngine() as eng:
        for name, options in MODES.items():
            eng.load_model(ModelConfig(model_path=model_path, model_name=name, n_workers=1, **options))
        yield eng, {name: eng.embed(name, TEXT, output="numpy").astype(np.float64) for name in MODES}


@pytest.fixture(scope="module")
def vectors(served: tuple[EmbeddingEngine, dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Each mode's vector of ``TEXT``."""
    return served[1]


def test_the_cache_keeps_each_mode_apart(served: tuple[EmbeddingEngine, dict[str, np.ndarray]]) -> None:
    eng, vectors = served
    stats = eng.cache_stats()
    assert (stats.hits, stats.size) == (0, len(MODES))
    np.testing.assert_array_equal(eng.embed("p1", TEXT, output="numpy"), vectors["p1"].astype(np.float32))
    assert eng.cache_stats().hits == 1  # the cache is on: the same mode is served from it


def test_l2_and_none_are_the_old_options(vectors: dict[str, np.ndarray]) -> None:
    raw = vectors["raw"]
    np.testing.assert_allclose(vectors["none"], raw, rtol=0, atol=1e-6)
    np.testing.assert_allclose(vectors["l2"], raw / np.linalg.norm(raw), rtol=1e-5, atol=1e-7)


def test_max_abs_reaches_the_int16_range(vectors: dict[str, np.ndarray]) -> None:
    raw, out = vectors["raw"], vectors["max_abs"]
    assert np.abs(out).max() == pytest.approx(32760.0, rel=1e-3)
    np.testing.assert_allclose(out, raw * (32760.0 / np.abs(raw).max()), rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize(("name", "p"), [("p3", 3.0), ("p1", 1.0)])
def test_p_norm_is_one(vectors: dict[str, np.ndarray], name: str, p: float) -> None:
    raw, out = vectors["raw"], vectors[name]
    assert float((np.abs(out) ** p).sum() ** (1 / p)) == pytest.approx(1.0, rel=1e-5)
    np.testing.assert_allclose(out, raw / (np.abs(raw) ** p).sum() ** (1 / p), rtol=1e-5, atol=1e-7)


def test_matryoshka_renormalizes_with_the_mode(vectors: dict[str, np.ndarray]) -> None:
    cut, raw = vectors["max_abs64"], vectors["raw"][:64]
    assert cut.shape == (64,)
    assert np.abs(cut).max() == pytest.approx(32760.0, rel=1e-3)
    np.testing.assert_allclose(cut, raw * (32760.0 / np.abs(raw).max()), rtol=1e-5, atol=1e-3)
