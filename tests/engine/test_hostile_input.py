"""Hostile input: every text yields a valid vector or an ``InvalidInputError`` naming its index and reason.

Runs on the real default model through the session engine (core); the adapter variants are at the bottom.
After every hostile call the engine must keep serving (checked by ``engine_still_serves``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from embellama import BatchResult, EmbeddingEngine, InvalidInputError
from tests.conftest import BATCH_TOL, MODEL_NAME

DIMS = 384
LIMIT = 256  # all-MiniLM-L6-v2's max_seq_length, recorded in the GGUF

# text -> why it is hostile; each must come back as a valid vector
VALID_HOSTILE = {
    "": "empty string ([CLS][SEP] only)",
    "   \t\n  ": "whitespace only",
    "a\x00b\x00": "NUL bytes",
    "\x01\x02\x07\x1b[31mred\x1b[0m\x7f": "control characters / ANSI escapes",
    "😀🎉👩‍👩‍👧‍👦🏳️‍🌈": "emoji with ZWJ sequences",
    "中文文本嵌入测试。日本語のテキスト한국어": "CJK",
    "مرحبا بالعالم \u202eשלום עולם\u202c": "RTL scripts and bidi override",  # noqa: RUF001
    "e\u0301\u0302\u0303\u0304 Z\u0351\u0352\u0353\u0354\u0355": "stacked combining marks",
    "\ufeff\u200b\u200d\ufffd": "BOM, zero-width chars, replacement char",
    "\U0010ffff\U000e0001": "non-characters / tag characters",
    "a " * (LIMIT - 2): "exactly at the token limit (254 words + [CLS] + [SEP])",
}

# item -> expected words in the reason
INVALID_ITEMS: list[tuple[Any, str]] = [
    (None, "expected str, got NoneType"),
    (42, "expected str, got int"),
    (b"bytes", "expected str, got bytes"),
    ({"text": "x"}, "expected str, got dict"),
    ("\ud800", "not valid Unicode"),
    ("ok \udfff end", "not valid Unicode"),
    ("a " * (LIMIT - 1), "257 tokens exceed the model's limit of 256"),
]


def unit_rows(rows: Any) -> np.ndarray:
    arr = np.asarray(rows, dtype=np.float32)
    assert arr.ndim == 2 and arr.shape[1] == DIMS
    assert np.isfinite(arr).all()
    np.testing.assert_allclose(np.linalg.norm(arr, axis=1), 1.0, atol=3e-4)
    return arr


def engine_still_serves(engine: EmbeddingEngine) -> None:
    unit_rows([engine.embed(MODEL_NAME, "still serving after hostile input")])


@pytest.mark.parametrize("text", list(VALID_HOSTILE), ids=list(VALID_HOSTILE.values()))
def test_hostile_but_valid_text_gets_a_unit_vector(engine: EmbeddingEngine, text: str) -> None:
    single = engine.embed(MODEL_NAME, text, output="numpy")
    unit_rows([single])
    batch = engine.embed_batch(MODEL_NAME, ["filler", text, "more filler"], output="numpy")
    np.testing.assert_allclose(unit_rows(batch)[1], single, atol=BATCH_TOL)


@pytest.mark.parametrize(("item", "reason"), INVALID_ITEMS, ids=[r for _, r in INVALID_ITEMS])
def test_invalid_item_raises_typed_error_with_index(engine: EmbeddingEngine, item: Any, reason: str) -> None:
    with pytest.raises(InvalidInputError) as info:
        engine.embed_batch(MODEL_NAME, ["fine", "also fine", item, "fine again"])
    assert info.value.index == 2
    assert reason in info.value.reason
    assert "index 2" in str(info.value)
    # the single-text API raises the same reason with no index
    with pytest.raises(InvalidInputError) as single:
        engine.embed(MODEL_NAME, item)
    assert single.value.index is None
    assert reason.split(",")[0] in single.value.reason
    engine_still_serves(engine)


def test_over_limit_error_carries_token_counts(engine: EmbeddingEngine) -> None:
    with pytest.raises(InvalidInputError) as info:
        engine.embed_batch(MODEL_NAME, ["x", "a " * (LIMIT - 1)])
    assert (info.value.index, info.value.n_tokens, info.value.limit) == (1, LIMIT + 1, LIMIT)
    assert info.value.model_name == MODEL_NAME


async def test_async_api_raises_the_same_typed_errors(engine: EmbeddingEngine) -> None:
    for item, reason in INVALID_ITEMS:
        with pytest.raises(InvalidInputError) as info:
            await engine.aembed_batch(MODEL_NAME, ["ok", item])
        assert info.value.index == 1 and reason in info.value.reason
        with pytest.raises(InvalidInputError):
            await engine.aembed(MODEL_NAME, item)
    assert len(await engine.aembed(MODEL_NAME, "async still serves")) == DIMS


@pytest.mark.parametrize("texts", [None, "a string", b"bytes"], ids=["None", "str", "bytes"])
def test_batch_argument_that_is_not_a_sequence_of_texts(engine: EmbeddingEngine, texts: Any) -> None:
    with pytest.raises(InvalidInputError, match="expected a sequence of texts"):
        engine.embed_batch(MODEL_NAME, texts)


def test_non_iterable_batch_argument(engine: EmbeddingEngine) -> None:
    with pytest.raises(TypeError):
        engine.embed_batch(MODEL_NAME, 42)  # type: ignore[arg-type]
    engine_still_serves(engine)


def test_one_megabyte_text_is_refused_or_truncated(engine: EmbeddingEngine, model_path: Any) -> None:
    big = "word " * 200_000  # 1 MB
    assert len(big.encode()) == 1_000_000
    with pytest.raises(InvalidInputError) as info:
        engine.embed(MODEL_NAME, big)
    assert info.value.n_tokens == 200_002 and info.value.limit == LIMIT
    from embellama import ModelConfig

    with EmbeddingEngine(cache_size=0) as eng:
        eng.load_model(ModelConfig(model_path=model_path, model_name="t", long_text_mode="truncate"))
        cut = eng.embed("t", big, output="numpy")
        at_limit = eng.embed("t", "word " * (LIMIT - 2), output="numpy")
    np.testing.assert_allclose(cut, at_limit, atol=BATCH_TOL)  # truncation keeps the first 254 words + [SEP]
    engine_still_serves(engine)


def test_generator_input(engine: EmbeddingEngine) -> None:
    def gen() -> Iterator[str]:
        yield from (f"generated text {i}" for i in range(10))

    rows = unit_rows(engine.embed_batch(MODEL_NAME, gen(), output="numpy"))
    assert rows.shape == (10, DIMS)
    np.testing.assert_allclose(rows[3], engine.embed(MODEL_NAME, "generated text 3", output="numpy"), atol=BATCH_TOL)
    assert engine.embed_batch(MODEL_NAME, iter([])) == []


def test_many_short_texts(engine: EmbeddingEngine) -> None:
    texts = [f"t{i}" for i in range(1000)]
    rows = unit_rows(engine.embed_batch(MODEL_NAME, texts, output="numpy"))
    assert rows.shape == (1000, DIMS)
    np.testing.assert_allclose(rows[777], engine.embed(MODEL_NAME, "t777", output="numpy"), atol=BATCH_TOL)


@pytest.mark.stress
def test_one_hundred_thousand_short_texts(engine: EmbeddingEngine) -> None:
    texts = [f"short text number {i}" for i in range(100_000)]
    seen: list[int] = []
    rows = engine.embed_batch(MODEL_NAME, texts, output="numpy", progress=lambda done, total: seen.append(done))
    unit_rows(rows)
    assert rows.shape == (100_000, DIMS) and seen[-1] == 100_000
    np.testing.assert_allclose(rows[99_999], engine.embed(MODEL_NAME, texts[99_999], output="numpy"), atol=BATCH_TOL)


# ---------------------------------------------------------------------- one bad item in a batch
def test_batch_with_one_bad_item_fails_by_default(engine: EmbeddingEngine) -> None:
    texts: list[Any] = [f"good {i}" for i in range(150)]
    texts[137] = "\ud800"
    with pytest.raises(InvalidInputError) as info:
        engine.embed_batch(MODEL_NAME, texts)
    assert info.value.index == 137  # the caller's index, across engine chunks (chunk_size 64)


def test_batch_with_bad_items_can_collect_per_item_errors(engine: EmbeddingEngine) -> None:
    texts: list[Any] = [f"good {i}" for i in range(150)]
    bad = {3: None, 64: 7, 100: "\udc00", 149: "a " * LIMIT}
    for i, item in bad.items():
        texts[i] = item
    result = engine.embed_batch(MODEL_NAME, texts, on_error="collect", output="numpy")
    assert isinstance(result, BatchResult) and not result.ok
    assert sorted(result.errors) == sorted(bad)
    for i, err in result.errors.items():
        assert err.index == i
    assert "NoneType" in result.errors[3].reason and "int" in result.errors[64].reason
    assert "Unicode" in result.errors[100].reason and result.errors[149].n_tokens == LIMIT + 2
    good = [i for i in range(150) if i not in bad]
    assert all(result.embeddings[i] is None for i in bad)
    rows = unit_rows([result.embeddings[i] for i in good])
    reference = engine.embed_batch(MODEL_NAME, [texts[i] for i in good], output="numpy")
    np.testing.assert_allclose(rows, reference, atol=BATCH_TOL)


async def test_async_collect_mode(engine: EmbeddingEngine) -> None:
    result = await engine.aembed_batch(MODEL_NAME, ["ok", None, "fine"], on_error="collect")
    assert list(result.errors) == [1] and result.embeddings[1] is None
    unit_rows([result.embeddings[0], result.embeddings[2]])


# ---------------------------------------------------------------------- property-based
_SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@_SETTINGS
@given(texts=st.lists(st.text(max_size=120), min_size=1, max_size=6))
def test_arbitrary_unicode_gives_unit_vectors_and_batch_equals_single(
    engine: EmbeddingEngine, texts: list[str]
) -> None:
    batch = unit_rows(engine.embed_batch(MODEL_NAME, texts, output="numpy"))
    assert batch.shape == (len(texts), DIMS)
    for text, row in zip(texts, batch, strict=True):
        single = engine.embed(MODEL_NAME, text, output="numpy")
        np.testing.assert_allclose(row, single, atol=BATCH_TOL)


@_SETTINGS
@given(texts=st.lists(st.text(alphabet=st.characters(codec=None, categories=None), max_size=40), max_size=6))
def test_any_python_str_is_a_vector_or_a_typed_error(engine: EmbeddingEngine, texts: list[str]) -> None:
    """Includes lone surrogates: each text is either embedded or reported by index, never a crash."""
    result = engine.embed_batch(MODEL_NAME, texts, on_error="collect", output="numpy")
    for i, text in enumerate(texts):
        try:
            text.encode("utf-8")
            encodable = True
        except UnicodeEncodeError:
            encodable = False
        if encodable:
            assert i not in result.errors
            vec = np.asarray(result.embeddings[i])
            assert vec.shape == (DIMS,) and np.isfinite(vec).all()
            assert math.isclose(float(np.linalg.norm(vec)), 1.0, abs_tol=1e-4)
        else:
            assert result.errors[i].index == i and "Unicode" in result.errors[i].reason


# ---------------------------------------------------------------------- adapters
@pytest.fixture(scope="module")
def adapters(model_path: Any) -> list[Any]:
    """The LangChain and LlamaIndex adapters on the default model in strict mode (``long_text_mode="raise"``; the
    adapters cut over-long texts by default), with small batches (errors cross batches)."""
    from embellama_integrations.langchain import EmbellamaEmbeddings
    from embellama_integrations.llama_index import EmbellamaEmbedding

    return [
        EmbellamaEmbeddings(model_path=str(model_path), long_text_mode="raise"),
        EmbellamaEmbedding(model_path=str(model_path), embed_batch_size=2, long_text_mode="raise"),
    ]


def _docs(adapter: Any, texts: list[Any]) -> list[list[float]]:
    if hasattr(adapter, "embed_documents"):
        out: list[list[float]] = adapter.embed_documents(texts)
    else:
        out = adapter.get_text_embedding_batch(texts)
    return out


def _query(adapter: Any, text: Any) -> list[float]:
    if hasattr(adapter, "embed_query"):
        out: list[float] = adapter.embed_query(text)
    else:
        out = adapter.get_query_embedding(text)
    return out


async def _adocs(adapter: Any, texts: list[Any]) -> list[list[float]]:
    if hasattr(adapter, "aembed_documents"):
        out: list[list[float]] = await adapter.aembed_documents(texts)
    else:
        out = await adapter.aget_text_embedding_batch(texts)
    return out


@pytest.mark.parametrize("kind", [0, 1], ids=["langchain", "llama_index"])
def test_adapters_embed_hostile_but_valid_texts(adapters: list[Any], kind: int) -> None:
    adapter = adapters[kind]
    texts = list(VALID_HOSTILE)
    rows = unit_rows(_docs(adapter, texts))
    assert rows.shape == (len(texts), DIMS)
    for i in (0, 4, len(texts) - 1):
        np.testing.assert_allclose(unit_rows([_query(adapter, texts[i])])[0], rows[i], atol=BATCH_TOL)


@pytest.mark.parametrize("kind", [0, 1], ids=["langchain", "llama_index"])
@pytest.mark.parametrize(("item", "reason"), INVALID_ITEMS, ids=[r for _, r in INVALID_ITEMS])
def test_adapters_raise_indexed_errors(adapters: list[Any], kind: int, item: Any, reason: str) -> None:
    adapter = adapters[kind]
    texts: list[Any] = ["a", "b", "c", "d", "e", item, "g"]  # index 5 sits in the third batch of 2
    with pytest.raises(InvalidInputError) as info:
        _docs(adapter, texts)
    assert reason.split(",")[0] in info.value.reason
    if kind == 0:
        assert info.value.index == 5
    with pytest.raises(InvalidInputError):
        _query(adapter, item)
    assert len(_query(adapter, "adapter still serves")) == DIMS


def test_llama_index_error_names_the_callers_index(adapters: list[Any]) -> None:
    # LlamaIndex splits the call into sub-batches of embed_batch_size before the adapter sees them
    with pytest.raises(InvalidInputError) as info:
        _docs(adapters[1], ["a", "b", "c", "d", "e", None, "g"])
    assert info.value.index == 5


async def test_llama_index_async_error_names_the_callers_index(adapters: list[Any]) -> None:
    with pytest.raises(InvalidInputError) as info:
        await _adocs(adapters[1], ["a", "b", "c", "d", "e", "f", "g", "\ud800", "i"])
    assert info.value.index == 7


@pytest.mark.parametrize("kind", [0, 1], ids=["langchain", "llama_index"])
async def test_adapters_async_hostile_input(adapters: list[Any], kind: int) -> None:
    adapter = adapters[kind]
    with pytest.raises(InvalidInputError) as info:
        await _adocs(adapter, ["ok", "fine", "\ud800"])
    assert "Unicode" in info.value.reason
    assert info.value.index == 2
    unit_rows(await _adocs(adapter, list(VALID_HOSTILE)[:4]))
