"""LangChain adapter: ``EmbellamaEmbeddings``, a local GGUF drop-in for any LangChain ``Embeddings``.

Example:
    >>> from embellama_integrations.langchain import EmbellamaEmbeddings
    >>> embeddings = EmbellamaEmbeddings()  # the default model; or model_path="/path/to/model.gguf"
    >>> vector = embeddings.embed_query("What is llama.cpp?")  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langchain_core.callbacks import Callbacks
from langchain_core.documents import Document
from langchain_core.documents.compressor import BaseDocumentCompressor
from langchain_core.embeddings import Embeddings
from pydantic import ConfigDict, Field, PrivateAttr

from embellama.engine.client import ClientBacked, ClientSlot, EmbeddingClient, model_path_from_env
from embellama.engine.engine import EmbeddingEngine
from embellama.types import Reranking
from embellama_integrations._options import (
    ClientOptionFields,
    ModelOptionFields,
    model_option_values,
    refuse_unknown,
    resolved_identity,
)

__all__ = ["EmbellamaEmbeddings", "EmbellamaReranker"]


class EmbellamaEmbeddings(ModelOptionFields, ClientOptionFields, Embeddings, ClientBacked):
    """Local embeddings from a GGUF model through llama.cpp, for LangChain.

    Every instance with the same model file and model options shares one loaded model (with LlamaIndex
    adapters too). Construction is cheap; the model loads on first use unless ``preload=True``. Every
    ``embellama.ModelConfig`` option (``pooling``, ``normalize``, ``dimensions``, ``long_text_mode``,
    ``max_tokens``, ``n_workers``, ``isolation``, ...) is a field of this class too; ``long_text_mode`` defaults to
    ``"truncate"`` here (one warning per call that cuts texts).

    Example:
        .. code-block:: python

            from langchain_core.vectorstores import InMemoryVectorStore
            from embellama_integrations.langchain import EmbellamaEmbeddings

            embeddings = EmbellamaEmbeddings(model_path="all-MiniLM-L6-v2-f16.gguf")
            store = InMemoryVectorStore.from_texts(["llamas are camelids"], embeddings)
            store.similarity_search("What is a llama?", k=1)
    """

    model_config = ConfigDict(
        extra="forbid", protected_namespaces=(), arbitrary_types_allowed=True, use_attribute_docstrings=True
    )

    model_path: str | None = Field(default_factory=model_path_from_env)
    """Path to the GGUF file. Defaults to ``$EMBELLAMA_MODEL_PATH``, else embellama's default model
    (all-MiniLM-L6-v2, built on first use)."""

    model_name: str | None = None
    """With ``engine``: the name of a model already loaded there (then ``model_path`` stays unset). Otherwise the
    name to register the model under. Defaults to the file name without ``.gguf``."""

    engine: EmbeddingEngine | None = Field(default=None, exclude=True)
    """An existing ``embellama.EmbeddingEngine`` to share. Defaults to the process-wide shared engine."""

    query_instruction: str | None = None
    """Prefix added to every query, e.g. ``"query: "`` (E5). Defaults to the model family's query prompt
    (Qwen3-Embedding, EmbeddingGemma, nomic, E5, bge presets); ``""`` means none."""

    document_instruction: str | None = None
    """Prefix added to every document, e.g. ``"passage: "`` (E5). Defaults to the model family's document prompt;
    ``""`` means none."""

    preload: bool = False
    """Load the model when the object is created instead of on first use."""

    _slot: ClientSlot = PrivateAttr(default_factory=ClientSlot)

    def __init__(self, **data: Any) -> None:
        """Validate the fields; invalid options raise ``embellama.ConfigurationError`` (from the core), and so do
        other libraries' keywords (``model_kwargs``, ``device``, ``max_length``, ``batch_size``...), naming the
        embellama equivalent."""
        refuse_unknown(type(self), data)
        super().__init__(**data)
        for name, value in resolved_identity(self.client).items():  # show the model in use, not None
            setattr(self, name, value)
        if self.preload:
            self.client.preload()

    @property
    def client(self) -> EmbeddingClient:
        """The ``embellama.engine.client.EmbeddingClient`` doing the work (rebuilt if a field was changed)."""
        return self._slot.get(
            dict(
                model_path=self.model_path,
                engine=self.engine,
                model_name=self.model_name,
                query_instruction=self.query_instruction,
                document_instruction=self.document_instruction,
                **model_option_values(self, by_name=self.engine is not None and self.model_path is None),
            )
        )

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Embed documents: one vector (a list of Python floats) per text, in order."""
        return self.client.embed_documents(texts)

    def embed_query(self, text: str) -> list[float]:
        """Embed one query."""
        return self.client.embed_query(text)

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        """Async :meth:`embed_documents`: awaits the model's thread (no executor, the loop never blocks)."""
        return await self.client.aembed_documents(texts)

    async def aembed_query(self, text: str) -> list[float]:
        """Async :meth:`embed_query`: awaits the model's thread."""
        return await self.client.aembed_query(text)


class EmbellamaReranker(ModelOptionFields, BaseDocumentCompressor, ClientBacked):
    """Rerank retrieved documents with a local cross-encoder GGUF, for LangChain (a ``BaseDocumentCompressor``).

    Scores every document against the query (many pairs per decode), keeps the ``top_n`` best and writes each
    score to ``metadata["relevance_score"]``. Use it in a ``ContextualCompressionRetriever``. Every
    ``embellama.ModelConfig`` option is a field too (``long_text_mode`` defaults to ``"truncate"``: the end of an
    over-long document is cut, never the query).

    Example:
        .. code-block:: python

            from langchain_classic.retrievers import ContextualCompressionRetriever
            from embellama_integrations.langchain import EmbellamaReranker

            reranker = EmbellamaReranker(model_path="reranker.gguf", top_n=3)
            retriever = ContextualCompressionRetriever(base_compressor=reranker, base_retriever=store.as_retriever())
    """

    model_config = ConfigDict(
        extra="forbid", protected_namespaces=(), arbitrary_types_allowed=True, use_attribute_docstrings=True
    )

    model_path: str | None = Field(default_factory=model_path_from_env)
    """Path to the reranker GGUF (a classification head, or RANK pooling). Defaults to ``$EMBELLAMA_MODEL_PATH``."""

    model_name: str | None = None
    """With ``engine``: a reranker already loaded there. Otherwise the name to register it under."""

    engine: EmbeddingEngine | None = Field(default=None, exclude=True)
    """An existing ``embellama.EmbeddingEngine`` to share. Defaults to the process-wide shared engine."""

    top_n: int | None = 3
    """How many documents to keep (the best by score); None keeps all, reordered."""

    normalize_scores: bool = False
    """Map single-logit scores through a sigmoid to 0..1 (otherwise the head's raw output)."""

    _slot: ClientSlot = PrivateAttr(default_factory=ClientSlot)

    def __init__(self, **data: Any) -> None:
        """Validate the fields; other libraries' keywords raise ``embellama.ConfigurationError`` naming the
        embellama equivalent."""
        refuse_unknown(type(self), data)
        super().__init__(**data)

    @property
    def client(self) -> EmbeddingClient:
        """The ``embellama.engine.client.EmbeddingClient`` doing the work (rebuilt if a field was changed)."""
        by_name = self.engine is not None and self.model_path is None
        options = model_option_values(self, by_name=by_name)
        return self._slot.get(
            dict(model_path=self.model_path, engine=self.engine, model_name=self.model_name, **options)
        )

    def compress_documents(
        self, documents: Sequence[Document], query: str, callbacks: Callbacks | None = None
    ) -> Sequence[Document]:
        """Score ``documents`` against ``query``; return the ``top_n`` best, best first, with their score."""
        if not documents:
            return []
        ranking = self.client.rerank(
            query, [d.page_content for d in documents], top_n=self.top_n, normalize=self.normalize_scores
        )
        return _ranked_documents(documents, ranking)

    async def acompress_documents(
        self, documents: Sequence[Document], query: str, callbacks: Callbacks | None = None
    ) -> Sequence[Document]:
        """Async :meth:`compress_documents`: awaits the model thread (no executor)."""
        if not documents:
            return []
        ranking = await self.client.arerank(
            query, [d.page_content for d in documents], top_n=self.top_n, normalize=self.normalize_scores
        )
        return _ranked_documents(documents, ranking)


def _ranked_documents(documents: Sequence[Document], ranking: Reranking) -> list[Document]:
    out = []
    for ranked in ranking.top:
        source = documents[ranked.index]
        out.append(source.model_copy(update={"metadata": {**source.metadata, "relevance_score": ranked.score}}))
    return out
