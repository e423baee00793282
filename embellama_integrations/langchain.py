"""LangChain adapter: ``EmbellamaEmbeddings``, a local GGUF drop-in for any LangChain ``Embeddings``.

Example:
    >>> from embellama_integrations.langchain import EmbellamaEmbeddings
    >>> embeddings = EmbellamaEmbeddings()  # the default model; or model_path="/path/to/model.gguf"
    >>> vector = embeddings.embed_query("What is llama.cpp?")  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

from langchain_core.embeddings import Embeddings
from pydantic import ConfigDict, Field, PrivateAttr

from embellama.client import DEFAULT_BATCH_SIZE, ClientBacked, ClientSlot, EmbeddingClient, model_path_from_env
from embellama.engine import EmbeddingEngine

from ._options import ClientOptionFields, ModelOptionFields, model_option_values, resolved_identity

__all__ = ["EmbellamaEmbeddings"]


class EmbellamaEmbeddings(ModelOptionFields, ClientOptionFields, Embeddings, ClientBacked):
    """Local embeddings from a GGUF model through llama.cpp, for LangChain.

    Every instance with the same model file and model options shares one loaded model (with LlamaIndex
    adapters too). Construction is cheap; the model loads on first use unless ``preload=True``. Every
    ``embellama.ModelConfig`` option (``pooling``, ``normalize``, ``dimensions``, ``truncate``, ``max_tokens``,
    ``n_workers``, ``isolation``, ...) is a field of this class too.

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

    batch_size: int = DEFAULT_BATCH_SIZE
    """Kept for compatibility: embellama's engine plans and splits every request itself."""

    preload: bool = False
    """Load the model when the object is created instead of on first use."""

    _slot: ClientSlot = PrivateAttr(default_factory=ClientSlot)

    def __init__(self, **data: Any) -> None:
        """Validate the fields; invalid options raise ``embellama.ConfigurationError`` (from the core)."""
        super().__init__(**data)
        for name, value in resolved_identity(self.client).items():  # show the model in use, not None
            setattr(self, name, value)
        if self.preload:
            self.client.preload()

    @property
    def client(self) -> EmbeddingClient:
        """The ``embellama.client.EmbeddingClient`` doing the work (rebuilt if a field was changed)."""
        return self._slot.get(
            dict(
                model_path=self.model_path,
                engine=self.engine,
                model_name=self.model_name,
                batch_size=self.batch_size,
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
