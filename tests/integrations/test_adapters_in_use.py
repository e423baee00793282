"""Both adapters inside real framework pipelines: long texts, real vector stores, caches, pickling and processes,
model lifetime, async loading, logging, options and progress bars.

Everything runs the real default model; the only patches are spies that wrap a real method to count its calls
(decodes, client calls, progress bars) or, in one place, slow a real model load down so that a blocking load would
be visible on the event loop.
"""

from __future__ import annotations

import asyncio
import copy
import gc
import io
import logging
import multiprocessing
import os
import pickle
import re
import shutil
import threading
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import lancedb
import numpy as np
import pytest
import tqdm.auto
from langchain_classic.embeddings import CacheBackedEmbeddings
from langchain_classic.storage import LocalFileStore
from langchain_community.vectorstores import FAISS, LanceDB
from langchain_core.documents import Document as LCDocument
from langchain_core.language_models.fake import FakeListLLM
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompt_values import PromptValue
from langchain_core.prompts import PromptTemplate
from langchain_core.runnables import RunnableLambda, RunnablePassthrough
from langchain_core.stores import InMemoryByteStore
from llama_index.core import Document as LIDocument
from llama_index.core import StorageContext, VectorStoreIndex
from llama_index.core.callbacks import CallbackManager, CBEventType, LlamaDebugHandler
from llama_index.core.ingestion import IngestionCache, IngestionPipeline
from llama_index.core.node_parser import SentenceSplitter
from llama_index.vector_stores.lancedb import LanceDBVectorStore
from pydantic import ValidationError

from embellama import ConfigurationError, EmbeddingEngine, InvalidInputError, ModelNotFoundError
from embellama.engine.client import EmbeddingClient, shared_engine
from embellama.model.embedding import EmbeddingModel
from embellama_integrations.langchain import EmbellamaEmbeddings
from embellama_integrations.llama_index import EmbellamaEmbedding
from tests.conftest import MODEL_NAME

LIMIT = 256  # all-MiniLM-L6-v2's max_seq_length

TOPICS = {
    "llama": "Llamas are domesticated South American camelids, used by Andean cultures as pack animals for centuries.",
    "python": "Python is a high-level programming language known for readable code and a large standard library.",
    "eiffel": "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France.",
    "photosynthesis": "Photosynthesis lets plants turn sunlight, water and carbon dioxide into glucose and oxygen.",
    "volcano": "A volcano erupts when molten rock, ash and gases escape from a magma chamber below the surface.",
    "bread": "To bake bread, mix flour, water, yeast and salt, knead the dough, let it rise, then bake it.",
    "moon": "The Apollo 11 mission landed the first humans on the Moon in July 1969.",
    "guitar": "An acoustic guitar has six strings that are plucked or strummed over a hollow wooden body.",
}
LONG = {"llama", "photosynthesis", "moon", "bread"}  # these become ~600-token documents

QUERIES = {
    "What animals carry loads in the Andes mountains?": "llama",
    "How do plants make food from light?": "photosynthesis",
    "When did astronauts first walk on the lunar surface?": "moon",
    "instrument with six strings": "guitar",
}

SAFE_NAMESPACE = re.compile(r"[A-Za-z0-9_.-]+")


def _long(topic: str, repeats: int = 30) -> str:
    """A document far over the 256-token limit, about one topic throughout."""
    return " ".join([TOPICS[topic]] * repeats)


def _corpus() -> dict[str, str]:
    """The topics, four of them as ~600-token documents. Each call's long documents end differently (past the
    limit, so the cut text is the same): the shared engine's cache never answers them, so every call cuts."""
    run = uuid.uuid4().hex[:8]
    return {key: f"{_long(key)} (copy {run})" if key in LONG else text for key, text in TOPICS.items()}


def _cos(a: Sequence[float], b: Sequence[float]) -> float:
    va, vb = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(va @ vb / (np.linalg.norm(va) * np.linalg.norm(vb)))


def _unique(n: int, tag: str) -> list[str]:
    """Texts no other test embeds, so the shared engine's cache cannot answer them."""
    run = uuid.uuid4().hex[:8]
    return [f"{tag} sentence number {i} of run {run} about {list(TOPICS)[i % len(TOPICS)]}" for i in range(n)]


def _count_decodes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Spy on the real ``EmbeddingModel.forward`` (in-process models): the sizes of the decodes that ran."""
    decodes: list[int] = []
    original = EmbeddingModel.forward

    def spy(self: EmbeddingModel, sequences: Any) -> Any:
        decodes.append(len(sequences))
        return original(self, sequences)

    monkeypatch.setattr(EmbeddingModel, "forward", spy)
    return decodes


def _count_client_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Spy on the real ``EmbeddingClient.embed_documents``: how many texts reached embellama per call."""
    calls: list[int] = []
    original = EmbeddingClient.embed_documents

    def spy(self: EmbeddingClient, texts: Sequence[str]) -> Any:
        calls.append(len(texts))
        return original(self, texts)

    monkeypatch.setattr(EmbeddingClient, "embed_documents", spy)
    return calls


def _truncation_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "embellama.engine.truncation" and r.levelno == logging.WARNING]


def _embellama_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("embellama-")]


# ---------------------------------------------------------------------------------------------------------------
# 1. long texts through the frameworks
# ---------------------------------------------------------------------------------------------------------------


def test_langchain_faiss_rag_chain_with_long_documents(model_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    corpus = _corpus()
    docs = [LCDocument(page_content=text, metadata={"key": key}) for key, text in corpus.items()]
    embeddings = EmbellamaEmbeddings(model_path=str(model_path))
    assert embeddings.long_text_mode == "truncate"  # the adapters' default
    caplog.set_level(logging.WARNING, logger="embellama.engine.truncation")
    store = FAISS.from_documents(docs, embeddings)
    warnings = _truncation_warnings(caplog)
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    message = warnings[0].getMessage()
    print(f"\ntruncation warning: {message}")
    assert f"{len(LONG)} of {len(docs)} texts" in message and "long_text_mode='raise'" in message
    assert store.index.ntotal == len(docs)

    retriever = store.as_retriever(search_kwargs={"k": 1})
    found = {q: retriever.invoke(q)[0].metadata["key"] for q in QUERIES}
    assert found == QUERIES

    prompts: list[str] = []

    def capture(prompt: PromptValue) -> PromptValue:
        prompts.append(prompt.to_string())
        return prompt

    def format_docs(found_docs: list[LCDocument]) -> str:
        return "\n\n".join(d.page_content for d in found_docs)

    prompt = PromptTemplate.from_template("Answer from the context.\nContext: {context}\nQuestion: {question}")
    llm = FakeListLLM(responses=["first answer", "second answer"])
    chain = (
        {"context": retriever | RunnableLambda(format_docs), "question": RunnablePassthrough()}
        | prompt
        | RunnableLambda(capture)
        | llm
        | StrOutputParser()
    )
    assert chain.invoke("How do plants make food from light?") == "first answer"
    assert chain.invoke("instrument with six strings") == "second answer"
    assert TOPICS["photosynthesis"] in prompts[0] and "Question: How do plants" in prompts[0]
    assert TOPICS["guitar"] in prompts[1]
    assert len(_truncation_warnings(caplog)) == 1  # short queries are never cut


async def test_langchain_faiss_async_with_long_documents(model_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    corpus = _corpus()
    caplog.set_level(logging.WARNING, logger="embellama.engine.truncation")
    store = await FAISS.afrom_texts(list(corpus.values()), EmbellamaEmbeddings(model_path=str(model_path)))
    assert len(_truncation_warnings(caplog)) == 1
    hits = await store.asimilarity_search("When did astronauts first walk on the lunar surface?", k=1)
    assert hits[0].page_content == corpus["moon"]


def test_truncation_warning_also_when_the_cut_vectors_come_from_the_cache(
    model_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Re-running a notebook cell rebuilds the store from the same corpus: its vectors are still of cut texts."""
    corpus = _corpus()
    caplog.set_level(logging.WARNING, logger="embellama.engine.truncation")
    embeddings = EmbellamaEmbeddings(model_path=str(model_path))
    FAISS.from_texts(list(corpus.values()), embeddings)
    assert len(_truncation_warnings(caplog)) == 1
    caplog.clear()
    FAISS.from_texts(list(corpus.values()), embeddings)  # served by the shared engine's cache
    messages = [r.getMessage() for r in _truncation_warnings(caplog)]
    assert len(messages) == 1, "a call returning vectors of cut texts from the cache logs nothing"
    assert f"{len(LONG)} of {len(corpus)} texts" in messages[0]


def test_strict_mode_refuses_before_embedding_anything(
    model_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    strict = EmbellamaEmbeddings(model_path=str(model_path), long_text_mode="raise")
    texts = [*_unique(70, "strict"), _long("volcano")]  # > 64 texts: several jobs; the LAST one is too long
    decodes = _count_decodes(monkeypatch)
    with pytest.raises(InvalidInputError) as info:
        strict.embed_documents(texts)
    err = info.value
    print(f"\nstrict error: {err}")
    assert err.index == 70
    assert err.limit == LIMIT and err.n_tokens is not None and err.n_tokens > LIMIT
    assert err.preview is not None and err.preview.rstrip("…") == texts[70][: len(err.preview.rstrip("…"))]
    assert len(err.preview.rstrip("…")) >= 20
    assert err.preview in str(err)
    assert decodes == []  # the whole request was checked first: nothing half-embedded
    assert _truncation_warnings(caplog) == []

    # through a vector store: the store stays as it was
    store = FAISS.from_texts(texts[:3], strict)
    before = store.index.ntotal
    with pytest.raises(InvalidInputError) as info:
        store.add_texts([*texts[3:70], texts[70]])
    assert info.value.index == 67
    assert store.index.ntotal == before

    # the spy does see decodes: the same valid texts embed
    assert len(strict.embed_documents(texts[:70])) == 70 and sum(decodes) >= 67


def test_llama_index_default_splitter_with_long_documents(model_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    corpus = {key: _long(key, 40) for key in TOPICS}  # ~4,000 characters each: one 1024-token chunk per document
    assert all(len(text) > 2500 for text in corpus.values())
    embed = EmbellamaEmbedding(str(model_path))
    caplog.set_level(logging.WARNING, logger="embellama.engine.truncation")
    index = VectorStoreIndex.from_documents([LIDocument(text=t, id_=k) for k, t in corpus.items()], embed_model=embed)
    assert _truncation_warnings(caplog), "over-long chunks are cut with a warning"
    assert all("long_text_mode='raise'" in r.getMessage() for r in _truncation_warnings(caplog))
    retriever = index.as_retriever(similarity_top_k=1)
    found = {q: retriever.retrieve(q)[0].node.ref_doc_id for q in QUERIES}
    assert found == QUERIES


def test_llama_index_one_truncation_warning_per_call(model_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """LlamaIndex splits a call into sub-batches of embed_batch_size; the user made one call and cut 3 texts."""
    embed = EmbellamaEmbedding(str(model_path), embed_batch_size=2)
    texts = [_long("llama"), "short", _long("moon"), "short too", _long("bread")]
    caplog.set_level(logging.WARNING, logger="embellama.engine.truncation")
    assert len(embed.get_text_embedding_batch(texts)) == 5
    messages = [r.getMessage() for r in _truncation_warnings(caplog)]
    print(f"\nwarnings: {messages}")
    assert len(messages) == 1, messages
    assert "3 of 5 texts" in messages[0]


def test_llama_index_strict_mode_names_the_callers_index(model_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    embed = EmbellamaEmbedding(str(model_path), long_text_mode="raise", embed_batch_size=5)
    texts = [*_unique(12, "li-strict"), _long("guitar")]
    with pytest.raises(InvalidInputError) as info:
        embed.get_text_embedding_batch(texts)
    assert info.value.index == 12 and info.value.limit == LIMIT
    assert info.value.preview is not None and info.value.preview in str(info.value)

    # the default splitter's 1024-token chunks are refused in strict mode, before any decode
    decodes = _count_decodes(monkeypatch)
    with pytest.raises(InvalidInputError):
        VectorStoreIndex.from_documents([LIDocument(text=_long("volcano", 40))], embed_model=embed)
    assert decodes == []


def test_llama_index_ingestion_cache_serves_the_second_run(
    model_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = [LIDocument(text=_long(key, 12), id_=key) for key in TOPICS]
    calls = _count_client_calls(monkeypatch)
    cache = IngestionCache()
    first = IngestionPipeline(
        transformations=[SentenceSplitter(chunk_size=256), EmbellamaEmbedding(str(model_path))], cache=cache
    ).run(documents=docs)
    assert calls and sum(calls) == len(first) and all(n.embedding is not None for n in first)
    cache.persist(str(tmp_path / "cache.json"))

    calls.clear()
    again = IngestionPipeline(  # a new process would build everything anew: same options, a persisted cache
        transformations=[SentenceSplitter(chunk_size=256), EmbellamaEmbedding(str(model_path))],
        cache=IngestionCache.from_persist_path(str(tmp_path / "cache.json")),
    ).run(documents=docs)
    assert calls == []  # served from the cache: nothing reached embellama
    assert [n.get_content() for n in again] == [n.get_content() for n in first]
    assert np.allclose(np.array([n.embedding for n in again]), np.array([n.embedding for n in first]))

    calls.clear()  # another option is another transformation: not served from the cache
    IngestionPipeline(
        transformations=[SentenceSplitter(chunk_size=256), EmbellamaEmbedding(str(model_path), dimensions=128)],
        cache=cache,
    ).run(documents=docs)
    assert sum(calls) == len(first)


def test_lancedb_round_trip_through_both_frameworks(model_path: Path, tmp_path: Path) -> None:
    corpus = _corpus()
    # LangChain
    embeddings = EmbellamaEmbeddings(model_path=str(model_path))
    store = LanceDB.from_documents(
        [LCDocument(page_content=t, metadata={"key": k}) for k, t in corpus.items()],
        embeddings,
        connection=lancedb.connect(str(tmp_path / "lc")),
        table_name="docs",
    )
    found = {q: store.similarity_search(q, k=1)[0].metadata["key"] for q in QUERIES}
    assert found == QUERIES
    # LlamaIndex
    vector_store = LanceDBVectorStore(uri=str(tmp_path / "li"), table_name="docs")
    index = VectorStoreIndex.from_documents(
        [LIDocument(text=t, id_=k) for k, t in corpus.items()],
        storage_context=StorageContext.from_defaults(vector_store=vector_store),
        embed_model=EmbellamaEmbedding(str(model_path)),
    )
    retriever = index.as_retriever(similarity_top_k=1)
    found = {q: retriever.retrieve(q)[0].node.ref_doc_id for q in QUERIES}
    assert found == QUERIES
    # reopened from disk
    reopened = VectorStoreIndex.from_vector_store(
        LanceDBVectorStore(uri=str(tmp_path / "li"), table_name="docs", mode="append"),
        embed_model=EmbellamaEmbedding(str(model_path)),
    )
    hit = reopened.as_retriever(similarity_top_k=1).retrieve("famous landmark in the French capital")[0]
    assert hit.node.ref_doc_id == "eiffel"


# ---------------------------------------------------------------------------------------------------------------
# 2. cache recipes
# ---------------------------------------------------------------------------------------------------------------


def test_cache_backed_embeddings_on_a_local_file_store(
    model_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = _unique(6, "filestore")
    emb = EmbellamaEmbeddings(model_path=str(model_path), query_instruction="query: ")
    assert SAFE_NAMESPACE.fullmatch(emb.namespace) and SAFE_NAMESPACE.fullmatch(emb.query_namespace)
    assert emb.namespace != emb.query_namespace

    def cached_for(e: EmbellamaEmbeddings) -> CacheBackedEmbeddings:
        return CacheBackedEmbeddings.from_bytes_store(
            e,
            LocalFileStore(tmp_path / "docs"),
            namespace=e.namespace,
            key_encoder="sha256",
            # one query store per query instruction: its vectors depend on it
            query_embedding_cache=LocalFileStore(tmp_path / "queries" / e.query_namespace),
        )

    calls = _count_client_calls(monkeypatch)
    first = cached_for(emb).embed_documents(docs)
    assert calls == [len(docs)]
    stored = [p for p in (tmp_path / "docs").rglob("*") if p.is_file()]
    assert len(stored) == len(docs) and all(p.name.startswith(emb.namespace) for p in stored)

    calls.clear()  # a new adapter and store over the same folder (a restarted program)
    fresh = EmbellamaEmbeddings(model_path=str(model_path), query_instruction="query: ")
    again = cached_for(fresh).embed_documents(docs)
    assert calls == []
    assert np.allclose(again, first)

    query = cached_for(emb).embed_query("where do llamas live")
    assert np.allclose(cached_for(fresh).embed_query("where do llamas live"), query)

    emb.query_instruction = "search_query: "
    assert emb.namespace == fresh.namespace  # documents are unaffected
    assert emb.query_namespace != fresh.query_namespace
    changed = cached_for(emb).embed_query("where do llamas live")
    assert _cos(changed, query) < 0.9999  # not the vector cached for the other instruction
    assert np.allclose(changed, emb.embed_query("where do llamas live"), atol=1e-5)


async def test_cache_backed_embeddings_in_memory_async(model_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    docs = _unique(5, "inmemory")
    emb = EmbellamaEmbeddings(model_path=str(model_path))
    store = InMemoryByteStore()
    cached = CacheBackedEmbeddings.from_bytes_store(emb, store, namespace=emb.namespace, key_encoder="sha256")
    first = await cached.aembed_documents(docs)
    assert sorted(store.yield_keys()) and all(k.startswith(emb.namespace) for k in store.yield_keys())
    decodes = _count_decodes(monkeypatch)
    calls: list[int] = []
    original = EmbeddingClient.aembed_documents

    async def spy(self: EmbeddingClient, texts: Sequence[str]) -> Any:
        calls.append(len(texts))
        return await original(self, texts)

    monkeypatch.setattr(EmbeddingClient, "aembed_documents", spy)
    again = await cached.aembed_documents([*docs, "one new text for the in-memory store " + uuid.uuid4().hex])
    assert calls == [1] and len(decodes) == 1
    assert np.allclose(again[:5], first)


# ---------------------------------------------------------------------------------------------------------------
# 3. pickling, copies and other processes
# ---------------------------------------------------------------------------------------------------------------


def _langchain_in_child(emb: EmbellamaEmbeddings) -> tuple[int, list[list[float]]]:
    return os.getpid(), emb.embed_documents(["x"])


def _llama_index_in_child(emb: EmbellamaEmbedding) -> tuple[int, list[float]]:
    return os.getpid(), emb.get_text_embedding("x")


def test_pickle_copy_and_model_copy_give_the_same_vectors(model_path: Path) -> None:
    lc = EmbellamaEmbeddings(model_path=str(model_path), query_instruction="query: ")
    li = EmbellamaEmbedding(str(model_path), query_instruction="query: ")
    lc_doc, lc_query = lc.embed_documents(["a llama"])[0], lc.embed_query("a llama")
    li_doc, li_query = li.get_text_embedding("a llama"), li.get_query_embedding("a llama")
    assert _cos(lc_doc, li_doc) > 0.9999 and _cos(lc_query, li_query) > 0.9999

    for clone in (pickle.loads(pickle.dumps(lc)), copy.deepcopy(lc), lc.model_copy(update={"normalize": False})):
        assert isinstance(clone, EmbellamaEmbeddings) and clone.query_instruction == "query: "
        assert _cos(clone.embed_documents(["a llama"])[0], lc_doc) > 0.9999
        assert _cos(clone.embed_query("a llama"), lc_query) > 0.9999
    unnormalized = lc.model_copy(update={"normalize": False})
    assert unnormalized.client.config is not None and unnormalized.client.config.normalize is False
    assert lc.client.config is not None and lc.client.config.normalize is True  # the original is untouched
    assert abs(np.linalg.norm(unnormalized.embed_query("a llama")) - 1.0) > 1e-3

    for li_clone in (pickle.loads(pickle.dumps(li)), copy.deepcopy(li)):
        assert isinstance(li_clone, EmbellamaEmbedding) and li_clone.query_instruction == "query: "
        assert _cos(li_clone.get_text_embedding("a llama"), li_doc) > 0.9999
        assert _cos(li_clone.get_query_embedding("a llama"), li_query) > 0.9999


def test_adapters_run_in_a_spawned_process(model_path: Path) -> None:
    lc = EmbellamaEmbeddings(model_path=str(model_path))
    li = EmbellamaEmbedding(str(model_path))
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        lc_future = pool.submit(_langchain_in_child, lc)
        li_future = pool.submit(_llama_index_in_child, li)
        lc_pid, lc_vectors = lc_future.result(timeout=120)
        li_pid, li_vector = li_future.result(timeout=120)
    assert lc_pid != os.getpid() and li_pid != os.getpid()
    assert len(lc_vectors) == 1 and _cos(lc_vectors[0], lc.embed_documents(["x"])[0]) > 0.9999
    assert _cos(li_vector, li.get_text_embedding("x")) > 0.9999


def test_langchain_adapter_bound_to_a_private_engine_refuses_pickling(engine: EmbeddingEngine) -> None:
    lc = EmbellamaEmbeddings(engine=engine, model_name=MODEL_NAME)
    assert len(lc.embed_query("x")) == 384
    with pytest.raises(TypeError, match="model_path"):
        pickle.dumps(lc)
    assert copy.deepcopy(lc).engine is engine  # a copy shares the engine (a service)


def test_llama_index_adapter_bound_to_a_private_engine_refuses_pickling(model_path: Path) -> None:
    """The private engine's model has options (here 32 dimensions) that a pickled copy cannot know: a copy that
    silently used the default model would give other vectors."""
    with EmbeddingEngine(cache_size=0) as private:
        private.load_model(model_path=model_path, model_name="private", dimensions=32)
        li = EmbellamaEmbedding(engine=private, model_name="private")
        assert len(li.get_query_embedding("x")) == 32
        with pytest.raises(TypeError, match="model_path"):
            clone = pickle.loads(pickle.dumps(li))
            print(f"\nunpickled copy embeds with {clone.client.model_path}: {len(clone.get_query_embedding('x'))} dims")


# ---------------------------------------------------------------------------------------------------------------
# 4. model_name given as a path
# ---------------------------------------------------------------------------------------------------------------


def test_model_name_naming_a_gguf_file_loads_that_file(model_path: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.gguf"
    shutil.copyfile(model_path, other)
    lc = EmbellamaEmbeddings(model_name=str(other))
    li = EmbellamaEmbedding(model_name=str(other))
    for adapter in (lc, li):
        assert adapter.client.model_path == other
        assert "other.gguf" in repr(adapter)
    vector = lc.embed_query("a llama")
    assert Path(lc.info.path) == other
    assert _cos(vector, li.get_query_embedding("a llama")) > 0.9999
    assert _cos(vector, EmbellamaEmbeddings(model_path=str(model_path)).embed_query("a llama")) > 0.9999

    missing_lc = EmbellamaEmbeddings(model_name=str(tmp_path / "missing.gguf"))
    missing_li = EmbellamaEmbedding(model_name=str(tmp_path / "missing.gguf"))
    with pytest.raises(ModelNotFoundError, match="missing"):
        missing_lc.embed_query("x")
    with pytest.raises(ModelNotFoundError, match="missing"):
        missing_li.get_query_embedding("x")


# ---------------------------------------------------------------------------------------------------------------
# 5. unknown options are refused, the frameworks' own fields work
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [{"max_length": 16}, {"device": "cuda"}, {"query_instructions": "x"}])
def test_unknown_options_are_refused_by_both_adapters(model_path: Path, bad: dict[str, Any]) -> None:
    (name,) = bad
    with pytest.raises((ValidationError, ConfigurationError, TypeError), match=name):
        EmbellamaEmbedding(str(model_path), **bad)
    with pytest.raises((ValidationError, ConfigurationError, TypeError), match=name):
        EmbellamaEmbeddings(model_path=str(model_path), **bad)


def test_llama_index_own_fields_still_work(model_path: Path) -> None:
    handler = LlamaDebugHandler()
    embed = EmbellamaEmbedding(
        str(model_path), embed_batch_size=4, callback_manager=CallbackManager([handler]), num_workers=2
    )
    assert embed.embed_batch_size == 4 and embed.num_workers == 2
    vectors = embed.get_text_embedding_batch([f"text {i}" for i in range(10)])
    assert len(vectors) == 10 and all(len(v) == 384 for v in vectors)
    assert len(handler.get_event_pairs(CBEventType.EMBEDDING)) == 3  # 4 + 4 + 2


# ---------------------------------------------------------------------------------------------------------------
# 6. the first async call loads the model off the event loop
# ---------------------------------------------------------------------------------------------------------------


async def _max_loop_gap(work: Any) -> tuple[Any, float]:
    gaps: list[float] = []
    stop = asyncio.Event()

    async def ticker() -> None:
        last = time.perf_counter()
        while not stop.is_set():
            await asyncio.sleep(0.005)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0.02)
    try:
        result = await work
    finally:
        stop.set()
        await task
    return result, max(gaps)


async def test_first_async_call_does_not_block_the_loop_while_loading(
    model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = EmbeddingModel.load

    def slow_load(self: EmbeddingModel) -> EmbeddingModel:
        time.sleep(0.3)  # a real load of a bigger model takes seconds; a blocking one would show as a gap
        return original(self)

    monkeypatch.setattr(EmbeddingModel, "load", slow_load)
    lc = EmbellamaEmbeddings(model_path=str(model_path), n_workers=1, max_tokens=200)
    vector, gap = await _max_loop_gap(lc.aembed_query("x"))
    print(f"\nLangChain first aembed_query: max loop gap {gap * 1000:.1f} ms")
    assert len(vector) == 384 and gap < 0.1

    li = EmbellamaEmbedding(str(model_path), n_workers=1, max_tokens=199)
    vector, gap = await _max_loop_gap(li.aget_query_embedding("x"))
    print(f"LlamaIndex first aget_query_embedding: max loop gap {gap * 1000:.1f} ms")
    assert len(vector) == 384 and gap < 0.1


# ---------------------------------------------------------------------------------------------------------------
# 7. logging
# ---------------------------------------------------------------------------------------------------------------


def test_loading_logs_one_info_line_and_no_llama_cpp_chatter(
    model_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)  # like logging.basicConfig(level=logging.INFO)
    emb = EmbellamaEmbeddings(model_path=str(model_path), model_name="logcheck", n_workers=1, max_tokens=198)
    emb.embed_query("x")
    mine = [r for r in caplog.records if r.name.startswith("embellama") and r.levelno == logging.INFO]
    about = [r for r in mine if "logcheck" in r.getMessage()]
    print(f"\nINFO records: {[r.getMessage() for r in mine]}")
    assert len(about) == 1 and "loaded model" in about[0].getMessage()
    assert not [r for r in caplog.records if r.name == "embellama.llama_cpp" and r.levelno <= logging.INFO]

    # llama.cpp's log does reach that logger, at DEBUG
    caplog.clear()
    caplog.set_level(logging.DEBUG, logger="embellama.llama_cpp")
    EmbellamaEmbeddings(model_path=str(model_path), model_name="logcheck2", n_workers=1, max_tokens=197).embed_query(
        "x"
    )
    chatter = [r for r in caplog.records if r.name == "embellama.llama_cpp"]
    assert chatter and all(r.levelno != logging.INFO for r in chatter)


# ---------------------------------------------------------------------------------------------------------------
# 8. models no adapter uses any more are released
# ---------------------------------------------------------------------------------------------------------------


def _wait_until(condition: Any, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return bool(condition())


def test_dropped_adapters_release_their_models(model_path: Path) -> None:
    import psutil

    gc.collect()
    baseline = len(_embellama_threads())
    rss_before = psutil.Process().memory_info().rss
    adapters = [  # large decode budgets, so each model's context holds measurable compute buffers
        EmbellamaEmbeddings(
            model_path=str(model_path),
            model_name=f"released-{i}",
            n_workers=1,
            dimensions=64 + 32 * i,
            batch_tokens=1024,
            max_texts_per_decode=4,
        )
        for i in range(6)
    ]
    for adapter in adapters:  # one full decode each (4 x 256 tokens), so the buffers are really resident
        adapter.embed_documents([f"{i} " + "word " * 250 for i in range(4)])
    for i, adapter in enumerate(adapters):
        assert len(adapter.embed_query("x")) == 64 + 32 * i
    names = {adapter.client.model_name for adapter in adapters}
    assert names <= set(shared_engine().models)
    assert len([t for t in _embellama_threads() if t.startswith("embellama-released-")]) == 6
    grown = psutil.Process().memory_info().rss - rss_before
    del adapter, adapters
    gc.collect()
    assert not names & set(shared_engine().models)
    assert _wait_until(lambda: len(_embellama_threads()) <= baseline), _embellama_threads()
    assert not [t for t in _embellama_threads() if t.startswith("embellama-released-")]
    released = psutil.Process().memory_info().rss - rss_before
    print(f"RSS: +{grown / 1e6:.0f} MB with 6 models, +{released / 1e6:.0f} MB after they were released")
    assert grown > 50e6 and released < grown / 2


def test_changing_a_field_releases_the_previous_model(model_path: Path) -> None:
    emb = EmbellamaEmbeddings(model_path=str(model_path), model_name="changed", n_workers=1)
    emb.embed_query("x")
    engine = shared_engine()

    def configs() -> list[bool]:
        return [engine.registry.model_config(n).normalize for n in engine.models if n.startswith("changed")]

    assert configs() == [True]
    emb.normalize = False
    assert abs(np.linalg.norm(emb.embed_query("x")) - 1.0) > 1e-3
    gc.collect()
    assert configs() == [False]
    assert _wait_until(lambda: len([t for t in _embellama_threads() if t.startswith("embellama-changed")]) == 1)


# ---------------------------------------------------------------------------------------------------------------
# 9. options reachable from both adapters
# ---------------------------------------------------------------------------------------------------------------


def test_max_tokens_and_batch_tokens_from_both_adapters(model_path: Path) -> None:
    head = "Llamas are domesticated South American camelids used as pack animals"
    a, b = head + " in the high Andes of Peru.", head + " and their wool is spun into yarn for clothes."
    lc_short = EmbellamaEmbeddings(model_path=str(model_path), max_tokens=8)
    li_short = EmbellamaEmbedding(str(model_path), max_tokens=8)
    for short in (lc_short, li_short):
        assert short.client.config is not None and short.client.config.max_tokens == 8
    cut = lc_short.embed_documents([a, b])
    assert _cos(cut[0], cut[1]) > 0.9999  # both cut to the same 8 tokens
    assert _cos(li_short.get_text_embedding(a), cut[0]) > 0.9999
    full = EmbellamaEmbeddings(model_path=str(model_path)).embed_documents([a, b])
    assert _cos(full[0], full[1]) < 0.99

    lc_big = EmbellamaEmbeddings(model_path=str(model_path), batch_tokens=512)
    li_big = EmbellamaEmbedding(str(model_path), batch_tokens=512)
    assert lc_big.client.config is not None and lc_big.client.config.batch_tokens == 512
    assert _cos(lc_big.embed_documents([a])[0], full[0]) > 0.9999
    assert _cos(li_big.get_text_embedding(a), full[0]) > 0.9999
    assert lc_big.client.model_name == li_big.client.model_name  # one model for both frameworks


def test_process_isolation_from_both_adapters(model_path: Path) -> None:
    lc = EmbellamaEmbeddings(model_path=str(model_path), isolation="process", n_workers=1)
    li = EmbellamaEmbedding(str(model_path), isolation="process", n_workers=1)
    vector = lc.embed_query("a llama")
    engine, name = lc.client.ensure_loaded()
    assert os.getpid() not in engine.worker_pids(name)
    assert li.client.model_name == name
    assert _cos(li.get_query_embedding("a llama"), vector) > 0.9999
    assert _cos(EmbellamaEmbeddings(model_path=str(model_path)).embed_query("a llama"), vector) > 0.9999


def test_langchain_on_error_collect(model_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    lc = EmbellamaEmbeddings(model_path=str(model_path), on_error="collect")
    vectors = lc.embed_documents(["a llama", None, "a guitar"])  # type: ignore[list-item]
    assert vectors[1] is None and vectors[0] is not None and vectors[2] is not None
    assert set(lc.client.last_errors) == {1}
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "collect" in r.getMessage()]
    assert len(warned) == 1 and "index 1" in warned[0]
    reference = EmbellamaEmbeddings(model_path=str(model_path)).embed_documents(["a llama", "a guitar"])
    assert _cos(vectors[0], reference[0]) > 0.9999 and _cos(vectors[2], reference[1]) > 0.9999


def test_llama_index_refuses_on_error_collect(model_path: Path) -> None:
    """LlamaIndex's embedding events and nodes need a vector for every text (they reject None), so the LlamaIndex
    adapter refuses collect mode with a message naming the alternatives, at construction and after assignment."""
    with pytest.raises(ConfigurationError, match="on_error='collect' is not available with LlamaIndex"):
        EmbellamaEmbedding(str(model_path), on_error="collect")
    li = EmbellamaEmbedding(str(model_path))
    li.on_error = "collect"
    with pytest.raises(ConfigurationError, match="embed_batch"):
        li.get_text_embedding_batch(["a llama"])


# ---------------------------------------------------------------------------------------------------------------
# 10. progress bars
# ---------------------------------------------------------------------------------------------------------------


def test_llama_index_shows_one_progress_bar_per_call(model_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bars: list[Any] = []

    class CountingTqdm(tqdm.auto.tqdm):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.setdefault("file", io.StringIO())  # keep the test output clean
            super().__init__(*args, **kwargs)
            bars.append(self)

    monkeypatch.setattr(tqdm.auto, "tqdm", CountingTqdm)
    embed = EmbellamaEmbedding(str(model_path), show_progress=True, embed_batch_size=4)
    texts = [f"progress text {i}" for i in range(10)]
    assert len(embed.get_text_embedding_batch(texts)) == 10
    assert len(bars) == 1 and bars[0].total == 10 and bars[0].n == 10

    bars.clear()  # LlamaIndex shows its own bar: embellama shows none
    assert len(embed.get_text_embedding_batch(texts, show_progress=True)) == 10
    ours = [b for b in bars if b.desc == "Embedding"]
    assert ours == [] and len(bars) == 1
