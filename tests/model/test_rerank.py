"""Reranking through the core, LangChain and LlamaIndex, against transformers on the same cross-encoder.

The cross-encoder is all-MiniLM-L6-v2's encoder with a seeded one-label head, built offline
(``tests/fixtures/rerankers.py``); its GGUF carries the head (``cls.output``) and no pooling type, as llama.cpp's
converter
writes BERT classifiers. Scores must match the classifier over the first token's hidden state within 0.02.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from embellama import ConfigurationError, EmbeddingEngine, InvalidInputError, ModelConfig
from embellama.cli.main import main as cli_main
from tests.conftest import BATCH_TOL
from tests.fixtures.rerankers import SAMPLE_DOCUMENTS, SAMPLE_QUERY, CrossEncoderFixture, cross_encoder

QUERIES = [SAMPLE_QUERY, "How do plants make energy?", "Which language is good for quick scripting?"]


@pytest.fixture(scope="module")
def ce() -> CrossEncoderFixture:
    return cross_encoder()


@pytest.fixture(scope="module")
def reranker(ce: CrossEncoderFixture) -> Any:
    with EmbeddingEngine(cache_size=0) as eng:
        eng.load_model(ModelConfig(model_path=ce.gguf_path, model_name="rr"))
        yield eng


def test_the_classifier_gguf_loads_as_a_reranker(reranker: EmbeddingEngine) -> None:
    info = reranker.model_info("rr")
    assert info.kind == "reranker" and info.pooling == "rank" and info.dimensions == 1


@pytest.mark.parametrize("query", QUERIES)
def test_scores_match_transformers_and_rank_the_same(
    reranker: EmbeddingEngine, ce: CrossEncoderFixture, query: str
) -> None:
    ranking = reranker.rerank("rr", query, SAMPLE_DOCUMENTS)
    want = ce.reference(query, SAMPLE_DOCUMENTS)
    assert np.max(np.abs(np.asarray(ranking.scores) - want)) < 0.02
    assert [r.index for r in ranking.top] == list(np.argsort(-want))
    assert ranking.top[0].document == SAMPLE_DOCUMENTS[int(np.argmax(want))]


async def test_async_rerank_awaits_the_model_thread(reranker: EmbeddingEngine) -> None:
    loop = asyncio.get_running_loop()
    original = loop.run_in_executor

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("arerank must not use an executor")

    loop.run_in_executor = refuse  # type: ignore[method-assign]
    try:
        together = await asyncio.gather(*(reranker.arerank("rr", q, SAMPLE_DOCUMENTS) for q in QUERIES))
    finally:
        loop.run_in_executor = original  # type: ignore[method-assign]
    for query, ranking in zip(QUERIES, together, strict=True):
        np.testing.assert_allclose(ranking.scores, reranker.rerank("rr", query, SAMPLE_DOCUMENTS).scores, atol=1e-3)


def test_top_n_normalize_and_edge_cases(reranker: EmbeddingEngine) -> None:
    ranking = reranker.rerank("rr", SAMPLE_QUERY, SAMPLE_DOCUMENTS, top_n=2)
    assert len(ranking.top) == 2 and len(ranking.scores) == len(SAMPLE_DOCUMENTS)
    assert len(reranker.rerank("rr", SAMPLE_QUERY, SAMPLE_DOCUMENTS, top_n=100).top) == len(SAMPLE_DOCUMENTS)
    normalized = reranker.rerank("rr", SAMPLE_QUERY, SAMPLE_DOCUMENTS, normalize=True).scores
    assert all(0 < s < 1 for s in normalized)
    np.testing.assert_allclose(normalized, 1 / (1 + np.exp(-np.asarray(ranking.scores))), rtol=1e-5)
    empty = reranker.rerank("rr", SAMPLE_QUERY, [])
    assert empty.scores == [] and empty.top == []
    with pytest.raises(ConfigurationError, match="top_n"):
        reranker.rerank("rr", SAMPLE_QUERY, SAMPLE_DOCUMENTS, top_n=0)
    with pytest.raises(InvalidInputError) as bad:
        reranker.rerank("rr", SAMPLE_QUERY, ["fine", None, "ok"])  # type: ignore[list-item]
    assert bad.value.index == 1
    with pytest.raises(InvalidInputError):
        reranker.rerank("rr", SAMPLE_QUERY, "not a list")  # type: ignore[arg-type]


def test_a_thousand_documents_many_pairs_per_decode(reranker: EmbeddingEngine, ce: CrossEncoderFixture) -> None:
    documents = [f"{SAMPLE_DOCUMENTS[i % len(SAMPLE_DOCUMENTS)]} (copy {i})" for i in range(1000)]
    ranking = reranker.rerank("rr", SAMPLE_QUERY, documents, top_n=5)
    assert len(ranking.scores) == 1000 and len(ranking.top) == 5
    sample = [0, 1, 500, 999]
    want = ce.reference(SAMPLE_QUERY, [documents[i] for i in sample])
    assert np.max(np.abs(np.asarray([ranking.scores[i] for i in sample]) - want)) < 0.02


def test_over_long_documents_are_cut_or_refused(ce: CrossEncoderFixture) -> None:
    long_document = "llamas graze in the high Andes " * 120  # ~700 tokens with the query: over 512
    with EmbeddingEngine(cache_size=0) as eng:
        eng.load_model(ModelConfig(model_path=ce.gguf_path, model_name="cut", long_text_mode="truncate", n_workers=1))
        eng.load_model(ModelConfig(model_path=ce.gguf_path, model_name="strict", n_workers=1))
        cut = eng.rerank("cut", SAMPLE_QUERY, ["short", long_document])
        assert np.isfinite(cut.scores).all()
        with pytest.raises(InvalidInputError) as info:
            eng.rerank("strict", SAMPLE_QUERY, ["short", "fine", long_document])
        assert info.value.index == 2 and info.value.n_tokens is not None and info.value.n_tokens > 512
        assert info.value.limit == 512 and "long_text_mode='truncate'" in info.value.reason
        with pytest.raises(InvalidInputError, match="query alone"):
            eng.rerank("cut", long_document * 2, ["a document"])  # the query is never cut


def test_embedders_and_rerankers_refuse_each_others_calls(
    reranker: EmbeddingEngine, engine: EmbeddingEngine, model_path: Path
) -> None:
    with pytest.raises(ConfigurationError, match="is a reranker"):
        reranker.embed("rr", "text")
    with pytest.raises(ConfigurationError, match="rerank\\(\\) needs a reranker"):
        engine.rerank("minilm", SAMPLE_QUERY, SAMPLE_DOCUMENTS)
    with EmbeddingEngine() as eng, pytest.raises(ConfigurationError, match="needs a classification head"):
        eng.load_model(ModelConfig(model_path=model_path, model_name="x", pooling="rank"))


def test_concurrent_rerank_and_embed_on_one_engine(ce: CrossEncoderFixture, model_path: Path) -> None:
    with EmbeddingEngine(cache_size=0) as eng:
        eng.load_model(ModelConfig(model_path=ce.gguf_path, model_name="rr"))
        eng.load_model(ModelConfig(model_path=model_path, model_name="emb"))
        expected_scores = eng.rerank("rr", SAMPLE_QUERY, SAMPLE_DOCUMENTS).scores
        expected_vectors = eng.embed_batch("emb", SAMPLE_DOCUMENTS, output="numpy")
        errors: list[BaseException] = []

        def work(i: int) -> None:
            try:
                for _ in range(5):
                    if i % 2:
                        got = eng.rerank("rr", SAMPLE_QUERY, SAMPLE_DOCUMENTS).scores
                        np.testing.assert_allclose(got, expected_scores, atol=2e-3)
                    else:
                        rows = eng.embed_batch("emb", SAMPLE_DOCUMENTS, output="numpy")
                        np.testing.assert_allclose(rows, expected_vectors, atol=BATCH_TOL)
            except BaseException as exc:  # handed to the test thread
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors, errors


def test_process_isolated_reranker(ce: CrossEncoderFixture) -> None:
    with EmbeddingEngine(cache_size=0) as eng:
        eng.load_model(ModelConfig(model_path=ce.gguf_path, model_name="iso", isolation="process", n_workers=1))
        got = eng.rerank("iso", SAMPLE_QUERY, SAMPLE_DOCUMENTS).scores
    assert np.max(np.abs(np.asarray(got) - ce.reference(SAMPLE_QUERY, SAMPLE_DOCUMENTS))) < 0.02


# ------------------------------------------------------------------------------------------------ LangChain
def test_langchain_compressor_in_a_contextual_compression_retriever(ce: CrossEncoderFixture, model_path: Path) -> None:
    from langchain_classic.retrievers import ContextualCompressionRetriever
    from langchain_core.documents import Document
    from langchain_core.vectorstores import InMemoryVectorStore

    from embellama_integrations.langchain import EmbellamaEmbeddings, EmbellamaReranker

    store = InMemoryVectorStore(EmbellamaEmbeddings(model_path=str(model_path)))
    store.add_documents([Document(page_content=t, metadata={"i": i}) for i, t in enumerate(SAMPLE_DOCUMENTS)])
    reranker = EmbellamaReranker(model_path=str(ce.gguf_path), top_n=3)
    retriever = ContextualCompressionRetriever(
        base_compressor=reranker, base_retriever=store.as_retriever(search_kwargs={"k": 6})
    )
    docs = retriever.invoke(SAMPLE_QUERY)
    want = ce.reference(SAMPLE_QUERY, SAMPLE_DOCUMENTS)
    assert [d.metadata["i"] for d in docs] == list(np.argsort(-want)[:3])
    for d in docs:
        assert abs(d.metadata["relevance_score"] - want[d.metadata["i"]]) < 0.02
    adocs = asyncio.run(reranker.acompress_documents(docs, SAMPLE_QUERY))
    assert [d.metadata["i"] for d in adocs] == [d.metadata["i"] for d in docs]
    assert reranker.compress_documents([], SAMPLE_QUERY) == []


# ------------------------------------------------------------------------------------------------ LlamaIndex
def test_llama_index_postprocessor_sets_scores_and_emits_events(ce: CrossEncoderFixture) -> None:
    from llama_index.core.instrumentation import get_dispatcher
    from llama_index.core.instrumentation.event_handlers import BaseEventHandler
    from llama_index.core.instrumentation.events.rerank import ReRankEndEvent, ReRankStartEvent
    from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

    from embellama_integrations.llama_index import EmbellamaRerank

    seen: list[str] = []

    class Recorder(BaseEventHandler):
        def handle(self, event: Any, **kwargs: Any) -> None:
            if isinstance(event, (ReRankStartEvent, ReRankEndEvent)):
                seen.append(type(event).__name__)

    root = get_dispatcher()
    recorder = Recorder()
    root.add_event_handler(recorder)
    try:
        reranker = EmbellamaRerank(model_path=str(ce.gguf_path), top_n=3)
        nodes = [NodeWithScore(node=TextNode(text=t, id_=str(i)), score=0.5) for i, t in enumerate(SAMPLE_DOCUMENTS)]
        kept = reranker.postprocess_nodes(nodes, query_bundle=QueryBundle(SAMPLE_QUERY))
        akept = asyncio.run(reranker.apostprocess_nodes(list(nodes), query_str=SAMPLE_QUERY))
    finally:
        root.event_handlers.remove(recorder)
    want = ce.reference(SAMPLE_QUERY, SAMPLE_DOCUMENTS)
    assert [int(n.node.id_) for n in kept] == list(np.argsort(-want)[:3])
    assert all(abs((n.score or 0) - want[int(n.node.id_)]) < 0.02 for n in kept)
    assert [n.node.id_ for n in akept] == [n.node.id_ for n in kept]
    assert seen.count("ReRankStartEvent") == 2 and seen.count("ReRankEndEvent") == 2
    assert reranker.postprocess_nodes([], query_str=SAMPLE_QUERY) == []
    with pytest.raises(ValueError, match="query"):
        reranker.postprocess_nodes(nodes)


# ------------------------------------------------------------------------------------------------ CLI
def test_cli_rerank(ce: CrossEncoderFixture, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    docs = tmp_path / "docs.txt"
    docs.write_text("\n".join(SAMPLE_DOCUMENTS) + "\n")
    assert cli_main(["rerank", str(ce.gguf_path), str(docs), "--query", SAMPLE_QUERY, "--top-n", "2", "--json"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    want = ce.reference(SAMPLE_QUERY, SAMPLE_DOCUMENTS)
    assert len(lines) == 2 and f'"index": {int(np.argmax(want))}' in lines[0]
