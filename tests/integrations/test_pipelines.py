"""End-to-end RAG pipelines on the real default model: retrieval quality and async ingestion = sync ingestion."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from langchain_core.documents import Document as LCDocument
from langchain_core.vectorstores import InMemoryVectorStore
from llama_index.core import Document as LIDocument
from llama_index.core import VectorStoreIndex
from llama_index.core.ingestion import IngestionPipeline
from llama_index.core.node_parser import SentenceSplitter

from embellama import EmbeddingEngine
from embellama_integrations.langchain import EmbellamaEmbeddings
from embellama_integrations.llama_index import EmbellamaEmbedding

CORPUS = {
    "llama": "Llamas are domesticated South American camelids, used by Andean cultures as pack animals for centuries.",
    "python": "Python is a high-level programming language known for readable code and a large standard library.",
    "eiffel": "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France.",
    "photosynthesis": "Photosynthesis lets plants turn sunlight, water and carbon dioxide into glucose and oxygen.",
    "stocks": "Stock prices dropped sharply after the central bank unexpectedly raised interest rates.",
    "football": "The football team won the championship final with a goal in the last minute of extra time.",
    "volcano": "A volcano erupts when molten rock, ash and gases escape from a magma chamber below the surface.",
    "bread": "To bake bread, mix flour, water, yeast and salt, knead the dough, let it rise, then bake it.",
    "moon": "The Apollo 11 mission landed the first humans on the Moon in July 1969.",
    "vaccine": "Vaccines train the immune system to recognise a pathogen without causing the disease.",
    "guitar": "An acoustic guitar has six strings that are plucked or strummed over a hollow wooden body.",
    "recycling": "Recycling plastic bottles reduces landfill waste and saves energy compared with new production.",
}

QUERIES = {
    "What animals carry loads in the Andes mountains?": "llama",
    "Which language should I learn to write software scripts?": "python",
    "famous landmark in the French capital": "eiffel",
    "How do plants make food from light?": "photosynthesis",
    "Why did the markets fall after the rate hike?": "stocks",
    "Who scored the winning goal in the final?": "football",
    "What happens when magma reaches the surface?": "volcano",
    "recipe for homemade loaf with yeast": "bread",
    "When did astronauts first walk on the lunar surface?": "moon",
    "How does immunization protect people?": "vaccine",
    "instrument with six strings": "guitar",
    "what to do with used plastic bottles": "recycling",
}


@pytest.fixture(scope="module")
def private_engine() -> Iterator[EmbeddingEngine]:
    """Cache off, so async and sync ingestion both really run the model."""
    with EmbeddingEngine(cache_size=0) as eng:
        yield eng


def _report(framework: str, found: dict[str, str]) -> None:
    hits = sum(found[q] == expected for q, expected in QUERIES.items())
    print(f"\n{framework}: {hits}/{len(QUERIES)} queries retrieved the expected document at rank 1")
    for query, expected in QUERIES.items():
        print(f"  {'ok ' if found[query] == expected else 'MISS'} {query!r} -> {found[query]} (expected {expected})")


def test_langchain_retrieval(model_path: Path) -> None:
    embeddings = EmbellamaEmbeddings(model_path=str(model_path))
    store = InMemoryVectorStore(embeddings)
    store.add_documents([LCDocument(page_content=text, id=key) for key, text in CORPUS.items()])
    found = {q: store.similarity_search(q, k=1)[0].id for q in QUERIES}
    _report("LangChain InMemoryVectorStore", found)  # type: ignore[arg-type]
    assert found == QUERIES


def test_llama_index_retrieval(model_path: Path) -> None:
    embed = EmbellamaEmbedding(str(model_path))
    index = VectorStoreIndex.from_documents(
        [LIDocument(text=text, id_=key) for key, text in CORPUS.items()], embed_model=embed
    )
    retriever = index.as_retriever(similarity_top_k=1)
    found = {q: retriever.retrieve(q)[0].node.ref_doc_id for q in QUERIES}
    _report("LlamaIndex VectorStoreIndex", found)  # type: ignore[arg-type]
    assert found == QUERIES


def _same_vectors(a: object, b: object) -> bool:
    """Equal up to the float noise of packing texts differently into decodes (measured: max |diff| ~1e-4,
    cosine >= 0.9999997 when concurrent queries share decodes with the documents)."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return x.shape == y.shape and bool(np.all((x * y).sum(axis=-1) > 0.99999)) and bool(np.abs(x - y).max() < 1e-3)


def _chunks(n: int) -> list[str]:
    texts = list(CORPUS.values())
    return [f"Chunk {i}: {texts[i % len(texts)]} (variant {i // len(texts)})" for i in range(n)]


async def test_langchain_async_ingestion_with_concurrent_queries(
    model_path: Path, private_engine: EmbeddingEngine
) -> None:
    embeddings = EmbellamaEmbeddings(model_path=str(model_path), engine=private_engine)
    chunks = _chunks(300)
    queries = list(QUERIES)
    docs, *query_vectors = await asyncio.gather(
        embeddings.aembed_documents(chunks), *(embeddings.aembed_query(q) for q in queries)
    )
    assert len(docs) == 300
    sync_docs = embeddings.embed_documents(chunks)
    assert _same_vectors(docs, sync_docs)
    assert _same_vectors(query_vectors, [embeddings.embed_query(q) for q in queries])
    assert _same_vectors(await embeddings.aembed_documents(chunks), sync_docs)  # and without concurrent queries
    store = InMemoryVectorStore(embeddings)
    await store.aadd_texts(chunks[:24])
    hit = (await store.asimilarity_search("instrument with six strings", k=1))[0]
    assert "guitar" in hit.page_content


async def test_llama_index_async_ingestion_with_concurrent_queries(
    model_path: Path, private_engine: EmbeddingEngine
) -> None:
    embed = EmbellamaEmbedding(str(model_path), engine=private_engine, embed_batch_size=16)
    documents = [LIDocument(text=" ".join(_chunks(300)[i : i + 3])) for i in range(0, 300, 3)]
    pipeline = IngestionPipeline(transformations=[SentenceSplitter(chunk_size=64, chunk_overlap=0), embed])
    queries = list(QUERIES)
    nodes, *query_vectors = await asyncio.gather(
        pipeline.arun(documents=documents, num_workers=None), *(embed.aget_query_embedding(q) for q in queries)
    )
    assert len(nodes) >= 200
    sync_nodes = pipeline.run(documents=documents)
    assert [n.get_content() for n in nodes] == [n.get_content() for n in sync_nodes]
    assert _same_vectors([n.embedding for n in nodes], [n.embedding for n in sync_nodes])
    assert _same_vectors(query_vectors, [embed.get_query_embedding(q) for q in queries])
