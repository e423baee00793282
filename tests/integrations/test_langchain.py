"""LangChain adapter: the langchain-tests standard suites plus vector store, cache and sharing checks."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from langchain_classic.embeddings import CacheBackedEmbeddings
from langchain_core.documents import Document
from langchain_core.stores import InMemoryByteStore
from langchain_core.vectorstores import InMemoryVectorStore
from langchain_tests.integration_tests import EmbeddingsIntegrationTests
from langchain_tests.unit_tests import EmbeddingsUnitTests

from embellama import ConfigurationError, EmbeddingEngine, default_model_path
from embellama.engine.client import shared_engine
from embellama_integrations.langchain import EmbellamaEmbeddings
from tests.conftest import BATCH_TOL, MODEL_NAME


class TestEmbellamaEmbeddingsUnit(EmbeddingsUnitTests):
    """langchain-tests' standard unit suite (construction, init from the environment)."""

    @property
    def embeddings_class(self) -> type[EmbellamaEmbeddings]:
        return EmbellamaEmbeddings

    @property
    def embedding_model_params(self) -> dict[str, Any]:
        return {"model_path": str(default_model_path()), "query_instruction": ""}

    @property
    def init_from_env_params(self) -> tuple[dict[str, str], dict[str, Any], dict[str, Any]]:
        path = str(default_model_path())
        return {"EMBELLAMA_MODEL_PATH": path}, {"show_progress": False}, {"model_path": path, "show_progress": False}


class TestEmbellamaEmbeddingsIntegration(EmbeddingsIntegrationTests):
    """langchain-tests' standard integration suite, on the real default model."""

    @property
    def embeddings_class(self) -> type[EmbellamaEmbeddings]:
        return EmbellamaEmbeddings

    @property
    def embedding_model_params(self) -> dict[str, Any]:
        return {"model_path": str(default_model_path())}


DOCS = [
    "The llama is a domesticated South American camelid used as a pack animal.",
    "Python is a programming language that emphasizes readability.",
    "The Eiffel Tower is a wrought-iron lattice tower in Paris.",
    "Photosynthesis converts light energy into chemical energy in plants.",
    "The stock market fell sharply after the interest rate announcement.",
]


def test_fields_are_documented_and_extra_is_forbidden() -> None:
    undocumented = [name for name, field in EmbellamaEmbeddings.model_fields.items() if not field.description]
    assert not undocumented
    with pytest.raises(ConfigurationError, match=r"'modle_path': did you mean model_path=\?"):
        EmbellamaEmbeddings(modle_path="typo.gguf")  # type: ignore[call-arg]


def test_invalid_options_raise_the_core_error() -> None:
    with pytest.raises(ConfigurationError, match="pooling"):
        EmbellamaEmbeddings(pooling="median")
    with pytest.raises(ConfigurationError, match=r"'batch_size'.*batch_tokens"):
        EmbellamaEmbeddings(batch_size=16)  # accepted and ignored once; now refused, naming what to use


def test_construction_is_cheap(tmp_path: Path) -> None:
    embeddings = EmbellamaEmbeddings(model_path=str(tmp_path / "later.gguf"))  # not read until used
    assert embeddings.client.model_name == "later"


def test_embed_documents_and_query(model_path: Path) -> None:
    embeddings = EmbellamaEmbeddings(model_path=str(model_path))
    vectors = embeddings.embed_documents(DOCS)
    assert len(vectors) == len(DOCS) and all(len(v) == 384 for v in vectors)
    assert all(type(x) is float for v in vectors for x in v)
    query = embeddings.embed_query("Which animal carries loads in the Andes?")
    assert int(np.argmax(np.asarray(vectors) @ np.asarray(query))) == 0
    assert vectors[1] == embeddings.embed_documents([DOCS[1]])[0]  # order kept, same text same vector


def test_instructions_and_changed_fields(model_path: Path) -> None:
    embeddings = EmbellamaEmbeddings(model_path=str(model_path), query_instruction="query: ")
    plain = EmbellamaEmbeddings(model_path=str(model_path))
    assert embeddings.embed_query("llama") == plain.embed_documents(["query: llama"])[0]
    embeddings.dimensions = 32  # a changed field takes effect
    assert len(embeddings.embed_query("llama")) == 32
    copy = plain.model_copy(update={"dimensions": 16})
    assert len(copy.embed_query("llama")) == 16 and len(plain.embed_query("llama")) == 384


def test_shares_an_existing_engine(engine: EmbeddingEngine) -> None:
    embeddings = EmbellamaEmbeddings(engine=engine, model_name=MODEL_NAME)
    assert embeddings.model_path is None
    assert embeddings.embed_query("hello") == engine.embed(MODEL_NAME, "hello")
    assert embeddings.client.engine is engine
    assert "engine" not in embeddings.model_dump()


def test_preload_and_info(model_path: Path) -> None:
    embeddings = EmbellamaEmbeddings(model_path=str(model_path), preload=True)
    assert embeddings.client.ensure_loaded()[1] in shared_engine().models
    assert embeddings.info.dimensions == 384


async def test_async_awaits_the_model_thread(engine: EmbeddingEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    embeddings = EmbellamaEmbeddings(engine=engine, model_name=MODEL_NAME)
    sync_docs, sync_query = embeddings.embed_documents(DOCS), embeddings.embed_query("llama")
    loop = asyncio.get_running_loop()

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("aembed_* must not call run_in_executor")

    monkeypatch.setattr(loop, "run_in_executor", refuse)
    docs, query = await asyncio.gather(embeddings.aembed_documents(DOCS), embeddings.aembed_query("llama"))
    # concurrent requests share decodes, so packing (and the last float digits) may differ from the sync run
    assert np.allclose(docs, sync_docs, atol=BATCH_TOL) and np.allclose(query, sync_query, atol=BATCH_TOL)


def test_in_memory_vector_store(model_path: Path) -> None:
    embeddings = EmbellamaEmbeddings(model_path=str(model_path))
    store = InMemoryVectorStore(embeddings)
    ids = store.add_documents([Document(page_content=d, metadata={"i": i}) for i, d in enumerate(DOCS)])
    assert len(ids) == len(DOCS)
    hits = store.similarity_search("famous landmark in France", k=2)
    assert hits[0].metadata["i"] == 2
    scored = store.similarity_search_with_score("how do plants make energy from sunlight", k=1)
    assert scored[0][0].metadata["i"] == 3 and scored[0][1] > 0.4


async def test_in_memory_vector_store_async(model_path: Path) -> None:
    store = await InMemoryVectorStore.afrom_texts(DOCS, EmbellamaEmbeddings(model_path=str(model_path)))
    hits = await store.asimilarity_search("a language for writing software", k=1)
    assert hits[0].page_content == DOCS[1]


def test_cache_backed_embeddings(model_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    embeddings = EmbellamaEmbeddings(model_path=str(model_path))
    store = InMemoryByteStore()
    cached = CacheBackedEmbeddings.from_bytes_store(
        embeddings, store, namespace=embeddings.namespace, key_encoder="sha256"
    )
    first = cached.embed_documents(DOCS)
    keys = list(store.yield_keys())
    assert len(keys) == len(DOCS) and all(k.startswith(embeddings.namespace) for k in keys)
    calls: list[int] = []
    original = embeddings.client.embed_documents
    monkeypatch.setattr(embeddings.client, "embed_documents", lambda texts: calls.append(len(texts)) or original(texts))
    again = cached.embed_documents([*DOCS, "a new text"])
    assert calls == [1]  # only the new text reached the model
    assert np.allclose(again[: len(DOCS)], first, atol=1e-6)
    assert EmbellamaEmbeddings(model_path=str(model_path), show_progress=True).namespace == embeddings.namespace
    assert EmbellamaEmbeddings(model_path=str(model_path), normalize=False).namespace != embeddings.namespace
