"""LlamaIndex adapter: BaseEmbedding contract, serialization, batching, async, callbacks and instrumentation."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from llama_index.core import Document, Settings, VectorStoreIndex
from llama_index.core.bridge.pydantic import Field
from llama_index.core.callbacks import CallbackManager, CBEventType, LlamaDebugHandler
from llama_index.core.ingestion import IngestionPipeline
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events import BaseEvent
from llama_index.core.instrumentation.events.embedding import EmbeddingEndEvent
from llama_index.core.node_parser import SentenceSplitter

from embellama import ConfigurationError, EmbeddingEngine
from embellama.engine.engine import EmbeddingEngine as Engine
from embellama_integrations.langchain import EmbellamaEmbeddings
from embellama_integrations.llama_index import EmbellamaEmbedding
from tests.conftest import MODEL_NAME

DOCS = [
    "The llama is a domesticated South American camelid used as a pack animal.",
    "Python is a programming language that emphasizes readability.",
    "The Eiffel Tower is a wrought-iron lattice tower in Paris.",
    "Photosynthesis converts light energy into chemical energy in plants.",
]


class _Collect(BaseEventHandler):
    """Instrumentation handler keeping every embedding end event."""

    events: list[BaseEvent] = Field(default_factory=list)

    @classmethod
    def class_name(cls) -> str:
        return "Collect"

    def handle(self, event: BaseEvent, **kwargs: Any) -> None:
        if isinstance(event, EmbeddingEndEvent):
            self.events.append(event)


@pytest.fixture
def collector() -> Iterator[_Collect]:
    handler = _Collect()
    dispatcher = get_dispatcher()  # the root: events of every module propagate to it
    dispatcher.add_event_handler(handler)
    try:
        yield handler
    finally:
        dispatcher.event_handlers.remove(handler)


@pytest.fixture
def counted_batches(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Sizes of the batches that reach the engine (a spy around the real method, not a mock)."""
    sizes: list[int] = []
    original = Engine.embed_batch
    aoriginal = Engine.aembed_batch

    def spy(self: Engine, name: str, texts: Any, **kwargs: Any) -> Any:
        texts = list(texts)
        sizes.append(len(texts))
        return original(self, name, texts, **kwargs)

    async def aspy(self: Engine, name: str, texts: Any, **kwargs: Any) -> Any:
        texts = list(texts)
        sizes.append(len(texts))
        return await aoriginal(self, name, texts, **kwargs)

    monkeypatch.setattr(Engine, "embed_batch", spy)
    monkeypatch.setattr(Engine, "aembed_batch", aspy)
    return sizes


def test_class_name_and_documented_fields() -> None:
    assert EmbellamaEmbedding.class_name() == "EmbellamaEmbedding"
    own = set(EmbellamaEmbedding.model_fields) - {"callback_manager"}
    assert all(EmbellamaEmbedding.model_fields[f].description for f in own)


def test_invalid_options_raise_the_core_error() -> None:
    with pytest.raises(ConfigurationError, match="pooling"):
        EmbellamaEmbedding(pooling="median")
    with pytest.raises(ConfigurationError, match="dimensions"):
        EmbellamaEmbedding(dimensions=-1)


def test_to_dict_from_dict_round_trip(model_path: Path) -> None:
    embed = EmbellamaEmbedding(
        str(model_path), query_instruction="query: ", text_instruction="passage: ", embed_batch_size=7, dimensions=64
    )
    data = embed.to_dict()
    assert data["class_name"] == "EmbellamaEmbedding"
    assert data["model_path"] == str(model_path) and data["embed_batch_size"] == 7
    assert "engine" not in data and "_slot" not in data
    again = EmbellamaEmbedding.from_dict(data)
    assert again.to_dict() == data
    assert again.get_query_embedding("llama") == embed.get_query_embedding("llama")
    assert len(again.get_text_embedding("llama")) == 64
    assert EmbellamaEmbedding.from_json(embed.to_json()).to_dict() == data


def test_query_and_text_embeddings_use_their_instructions(engine: EmbeddingEngine) -> None:
    embed = EmbellamaEmbedding(
        engine=engine, model_name=MODEL_NAME, query_instruction="query: ", text_instruction="passage: "
    )
    assert embed.model_name == MODEL_NAME and embed.model_path is None
    assert embed.get_query_embedding("llama") == engine.embed(MODEL_NAME, "query: llama")
    assert embed.get_text_embedding("llama") == engine.embed(MODEL_NAME, "passage: llama")
    assert embed.get_text_embedding_batch(["a", "b"]) == engine.embed_batch(MODEL_NAME, ["passage: a", "passage: b"])


def test_embed_batch_size_is_honoured_and_batched_through_the_core(
    engine: EmbeddingEngine, counted_batches: list[int]
) -> None:
    embed = EmbellamaEmbedding(engine=engine, model_name=MODEL_NAME, embed_batch_size=4)
    vectors = embed.get_text_embedding_batch([f"text {i}" for i in range(10)])
    assert counted_batches == [4, 4, 2]  # one core call per batch, not one per text
    assert len(vectors) == 10


async def test_async_twins_are_truly_async(
    engine: EmbeddingEngine, monkeypatch: pytest.MonkeyPatch, counted_batches: list[int]
) -> None:
    embed = EmbellamaEmbedding(engine=engine, model_name=MODEL_NAME, embed_batch_size=3)
    texts = [f"async {i}" for i in range(7)]
    sync = embed.get_text_embedding_batch(texts)
    sync_q, sync_t = embed.get_query_embedding("q"), embed.get_text_embedding("t")
    counted_batches.clear()
    loop = asyncio.get_running_loop()

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("async embedding must not call run_in_executor")

    monkeypatch.setattr(loop, "run_in_executor", refuse)
    batch, q, t = await asyncio.gather(
        embed.aget_text_embedding_batch(texts), embed.aget_query_embedding("q"), embed.aget_text_embedding("t")
    )
    assert np.allclose(batch, sync, atol=1e-5)
    assert np.allclose(q, sync_q, atol=1e-5) and np.allclose(t, sync_t, atol=1e-5)
    assert sorted(counted_batches) == [1, 1, 3, 3]  # batches 3, 3, 1 and the lone text; the query: aembed


def test_shares_one_model_with_the_langchain_adapter(model_path: Path) -> None:
    li = EmbellamaEmbedding(str(model_path), text_instruction="passage: ")
    lc = EmbellamaEmbeddings(model_path=str(model_path), document_instruction="passage: ")
    assert li.client.ensure_loaded() == lc.client.ensure_loaded()  # same engine, same registered model
    engine = li.client.engine
    n_models = len(engine.models)
    EmbellamaEmbedding(str(model_path)).get_query_embedding("x")
    EmbellamaEmbeddings(model_path=str(model_path), show_progress=True).embed_query("x")
    assert len(engine.models) == n_models
    assert li.namespace == lc.namespace
    assert li.get_text_embedding("llama") == lc.embed_documents(["llama"])[0]


def test_vector_store_index_with_callbacks_and_instrumentation(
    model_path: Path, collector: _Collect, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    debug = LlamaDebugHandler()
    embed = EmbellamaEmbedding(str(model_path), embed_batch_size=2, preload=True)
    monkeypatch.setattr(Settings, "_embed_model", None)  # restored after the test
    monkeypatch.setattr(Settings, "_callback_manager", None)
    Settings.callback_manager = CallbackManager([debug])
    Settings.embed_model = embed  # the embed model takes the global callback manager
    assert embed.callback_manager is Settings.callback_manager
    index = VectorStoreIndex.from_documents([Document(text=d) for d in DOCS], show_progress=True)
    assert "Generating embeddings" in capsys.readouterr().err  # LlamaIndex's progress bar ran
    hits = index.as_retriever(similarity_top_k=1).retrieve("Which tower stands in Paris?")
    assert hits[0].node.get_content() == DOCS[2]
    pairs = debug.get_event_pairs(CBEventType.EMBEDDING)
    assert len(pairs) >= 3  # two document batches of 2, then the query
    embedded = sum(len(e.chunks) for e in collector.events)
    assert embedded >= len(DOCS) + 1


async def test_ingestion_pipeline_sync_and_async(engine: EmbeddingEngine) -> None:
    embed = EmbellamaEmbedding(engine=engine, model_name=MODEL_NAME, embed_batch_size=8)
    text = " ".join(f"Sentence {i} talks about item number {i}." for i in range(120))
    pipeline = IngestionPipeline(transformations=[SentenceSplitter(chunk_size=64, chunk_overlap=0), embed])
    nodes = pipeline.run(documents=[Document(text=text)])
    assert len(nodes) > 5 and all(n.embedding is not None and len(n.embedding) == 384 for n in nodes)
    anodes = await pipeline.arun(documents=[Document(text=text)])
    assert [n.get_content() for n in anodes] == [n.get_content() for n in nodes]
    assert np.allclose([n.embedding for n in anodes], [n.embedding for n in nodes], atol=1e-5)
