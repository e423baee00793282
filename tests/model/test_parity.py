"""Our vectors match sentence-transformers on the same weights, for every pooling both support."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from embellama import EmbeddingModel, ModelConfig
from tests.fixtures.texts import varied_texts

ST_MODES = {"mean": "mean", "cls": "cls", "max": "max", "mean_sqrt_len": "mean_sqrt_len_tokens"}


@pytest.fixture(scope="module")
def st_transformer(st_dir: Path):  # type: ignore[no-untyped-def]
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(st_dir), device="cpu")


def _reference(st_transformer, pooling: str, normalize: bool, texts: list[str]) -> np.ndarray:  # type: ignore[no-untyped-def]
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.models import Normalize, Pooling

    modules = [st_transformer[0], Pooling(st_transformer[0].get_word_embedding_dimension(), ST_MODES[pooling])]
    if normalize:
        modules.append(Normalize())
    return SentenceTransformer(modules=modules, device="cpu").encode(texts, convert_to_numpy=True, batch_size=16)


def test_texts_cover_the_token_range(model_path: Path) -> None:
    with EmbeddingModel(ModelConfig(model_path=model_path)) as model:
        lengths = [len(model.tokenize(t)) for t in varied_texts()]
        limit = model.max_sequence_length
    assert len(lengths) >= 50
    assert min(lengths) <= 3
    assert 240 <= max(lengths) <= limit == 256


@pytest.mark.parametrize("normalize", [True, False], ids=["normalized", "raw"])
@pytest.mark.parametrize("pooling", list(ST_MODES))
def test_matches_sentence_transformers(
    model_path: Path,
    st_transformer,  # type: ignore[no-untyped-def]
    pooling: str,
    normalize: bool,
) -> None:
    texts = varied_texts()
    with EmbeddingModel(ModelConfig(model_path=model_path, pooling=pooling, normalize=normalize)) as model:
        ours = model.embed(texts)
    ref = _reference(st_transformer, pooling, normalize, texts)
    assert ours.shape == ref.shape == (len(texts), 384)
    cos = (ours * ref).sum(1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(ref, axis=1))
    worst = int(np.argmin(cos))
    assert cos.min() >= 0.999, f"text {worst} ({texts[worst][:40]!r}) cosine {cos[worst]:.5f}"
    # magnitudes match too, not only directions (16-bit weights: allow 1% relative; seen: F16 1.0e-3, BF16 3.8e-3)
    norms_ours, norms_ref = np.linalg.norm(ours, axis=1), np.linalg.norm(ref, axis=1)
    np.testing.assert_allclose(norms_ours, norms_ref, rtol=1e-2)


def test_default_pooling_is_the_models_own(model_path: Path) -> None:
    with EmbeddingModel(ModelConfig(model_path=model_path)) as model:
        assert model.model_pooling is not None and model.model_pooling.value == "mean"
        assert model.pooling.value == "mean"
