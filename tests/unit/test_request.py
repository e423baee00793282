"""The request object and its planning over a fake model: chunks, cache, collect mode, the strict pre-check,
progress, and the sync and async twins giving the same answers (no llama.cpp)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import numpy as np
import pytest

from embellama import BatchResult, EmbeddingEngine, InvalidInputError, ModelConfig
from embellama.engine.planning import split
from embellama.engine.request import Request
from tests.fixtures.fake_model import FakeModel, expected, serve_fake_models

TEXTS = [f"t{i}" for i in range(40)]


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeModel:
    model = FakeModel()
    serve_fake_models(monkeypatch, model)
    return model


@pytest.fixture
def engine(fake: FakeModel) -> Iterator[EmbeddingEngine]:
    with EmbeddingEngine(cache_size=1000, chunk_size=8) as eng:
        eng.load_model(ModelConfig(model_path="fake.gguf", model_name="f", n_workers=2))
        yield eng


def test_a_plan_cuts_the_misses_into_even_chunks_of_at_most_chunk_size(engine: EmbeddingEngine) -> None:
    plan = Request.embeddings(engine.registry, "f", TEXTS).plan()
    assert [len(c) for c in plan.chunks] == [8] * 5  # 40 texts, chunk_size 8, at least one decode's worth (8) each
    assert sorted(i for c in plan.chunks for i in c) == list(range(40))
    assert plan.chunks == split(list(range(40)), 2, 8, 8)
    few = Request.embeddings(engine.registry, "f", TEXTS[:6]).plan()
    assert [len(c) for c in few.chunks] == [6]  # not cut below one decode's worth to feed both workers


def test_identical_texts_share_one_slot_and_one_vector(engine: EmbeddingEngine, fake: FakeModel) -> None:
    texts = ["a", "b", "a", "c", "a"]
    request = Request.embeddings(engine.registry, "f", texts, output="numpy")
    plan = request.plan()
    assert sum(len(c) for c in plan.chunks) == 3 and plan.copies == {2: 0, 4: 0}
    rows = request.run()
    assert (rows[0] == rows[2]).all() and (rows[0] == rows[4]).all()
    assert fake.prepared == 3 and request.tokens == 5  # one token per character, every index counted


def test_cache_hits_are_planned_away_and_misses_are_embedded(engine: EmbeddingEngine, fake: FakeModel) -> None:
    first = engine.embed_batch("f", TEXTS[:20], output="numpy")
    stats = engine.cache_stats()
    assert stats.hits == 0 and stats.misses == 20
    decodes = len(fake.decodes)
    request = Request.embeddings(engine.registry, "f", TEXTS[:30], output="numpy")
    plan = request.plan()
    assert sorted(i for c in plan.chunks for i in c) == list(range(20, 30)) and plan.done_at_start == 20
    rows = request.run()
    np.testing.assert_array_equal(rows[:20], first)  # the cached rows, bit for bit
    np.testing.assert_allclose(rows[20:], np.stack([expected(t) for t in TEXTS[20:30]]), rtol=1e-6)
    assert engine.cache_stats().hits == 20 and len(fake.decodes) > decodes
    decodes = len(fake.decodes)
    again = Request.embeddings(engine.registry, "f", TEXTS[:30], output="numpy")
    assert again.plan().chunks == [] and again.run().shape == (30, 4) and len(fake.decodes) == decodes
    assert again.tokens == request.tokens  # cache answers count the tokens remembered with them
    engine.clear_cache()
    assert Request.embeddings(engine.registry, "f", TEXTS[:30]).plan().done_at_start == 0


def test_collect_gives_valid_texts_vectors_and_bad_ones_errors(engine: EmbeddingEngine) -> None:
    texts = ["ok", "bad", 3, "x" * 20, "fine", "bad"]
    result = engine.embed_batch("f", texts, on_error="collect")  # type: ignore[arg-type]
    assert isinstance(result, BatchResult)
    assert sorted(result.errors) == [1, 2, 3, 5]
    assert result.errors[3].n_tokens == 20 and result.errors[5].index == 5
    assert [e is None for e in result.embeddings] == [False, True, True, True, False, True]
    np.testing.assert_allclose(result.embeddings[4], expected("fine"), rtol=1e-6)
    with pytest.raises(InvalidInputError) as raised:
        engine.embed_batch("f", texts)  # type: ignore[arg-type]
    assert raised.value.index == 2  # planning finds the non-str before any job runs


def test_strict_mode_checks_a_multi_job_request_before_any_decode(engine: EmbeddingEngine, fake: FakeModel) -> None:
    texts = [f"fresh {i}" for i in range(40)] + ["x" * 20]
    before, prepared = len(fake.decodes), fake.prepared
    with pytest.raises(InvalidInputError) as late:
        engine.embed_batch("f", texts)
    assert late.value.index == 40 and late.value.n_tokens == 20
    assert len(fake.decodes) == before  # nothing was embedded
    assert 0 < fake.prepared - prepared <= len(texts)  # only texts that might not fit were tokenized
    collected = engine.embed_batch("f", texts, on_error="collect")  # no pre-check when collecting
    assert sorted(collected.errors) == [40] and len(fake.decodes) > before


def test_progress_runs_in_the_callers_thread_up_to_the_total(engine: EmbeddingEngine) -> None:
    engine.embed_batch("f", TEXTS[:10])  # cached: counted as done before any worker runs
    seen: list[tuple[int, int, int]] = []
    engine.embed_batch("f", TEXTS, progress=lambda d, t: seen.append((d, t, threading.get_ident())))
    assert {tid for _, _, tid in seen} == {threading.get_ident()}
    done = [d for d, _, _ in seen]
    assert done == sorted(done) and done[0] > 10 and seen[-1][:2] == (40, 40)
    all_cached: list[tuple[int, int]] = []
    engine.embed_batch("f", TEXTS, progress=lambda d, t: all_cached.append((d, t)))
    assert all_cached == [(40, 40)]


def test_the_async_twins_answer_exactly_as_the_sync_ones(fake: FakeModel) -> None:
    texts = [*TEXTS, "bad", "t3"]
    with EmbeddingEngine(cache_size=0, chunk_size=8) as eng:  # no cache: both twins really embed
        eng.load_model(ModelConfig(model_path="fake.gguf", model_name="f", n_workers=2))

        async def twins() -> tuple[object, ...]:
            return (
                await eng.aembed_batch("f", TEXTS),
                await eng.aembed_batch("f", TEXTS, output="numpy"),
                await eng.aembed_batch("f", texts, on_error="collect"),
                await eng.aembed("f", "hello", prompt="q "),
                await eng.acount_tokens("f", texts[:-2]),
                await eng.aembed_with_usage("f", TEXTS),
            )

        listed, rows, collected, one, tokens, (usage_rows, usage) = asyncio.run(twins())
        assert listed == eng.embed_batch("f", TEXTS)
        np.testing.assert_array_equal(rows, eng.embed_batch("f", TEXTS, output="numpy"))
        sync_collected = eng.embed_batch("f", texts, on_error="collect")
        assert isinstance(collected, BatchResult)
        assert collected.embeddings == sync_collected.embeddings and sorted(collected.errors) == [40]
        assert one == eng.embed("f", "hello", prompt="q ")
        np.testing.assert_allclose(one, expected("q hello"), rtol=1e-6)
        assert tokens == eng.count_tokens("f", TEXTS) == sum(len(t) for t in TEXTS)
        np.testing.assert_array_equal(usage_rows, rows)
        assert usage == tokens


def test_a_request_reports_tokens_only_once_planned(engine: EmbeddingEngine) -> None:
    request = Request.embeddings(engine.registry, "f", ["abc", "de"])
    with pytest.raises(RuntimeError, match="not been planned"):
        _ = request.tokens
    assert request.run() == engine.embed_batch("f", ["abc", "de"]) and request.tokens == 5


def test_a_single_text_answers_its_vector_and_names_no_index(engine: EmbeddingEngine) -> None:
    vector = Request.embeddings(engine.registry, "f", ["hello"], single=True).run()
    np.testing.assert_allclose(vector, expected("hello"), rtol=1e-6)
    with pytest.raises(InvalidInputError) as raised:
        engine.embed("f", "bad")
    assert raised.value.index is None
