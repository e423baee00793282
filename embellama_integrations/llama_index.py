"""LlamaIndex adapter: ``EmbellamaEmbedding``, a local GGUF embedding model for LlamaIndex.

Example:
    >>> from llama_index.core import Settings
    >>> from embellama_integrations.llama_index import EmbellamaEmbedding
    >>> Settings.embed_model = EmbellamaEmbedding()  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.bridge.pydantic import ConfigDict, Field, PrivateAttr
from llama_index.core.callbacks import CBEventType, EventPayload
from llama_index.core.constants import DEFAULT_EMBED_BATCH_SIZE
from llama_index.core.instrumentation import get_dispatcher  # type: ignore[attr-defined]
from llama_index.core.instrumentation.events.rerank import ReRankEndEvent, ReRankStartEvent
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle

from embellama.engine.client import ClientBacked, ClientSlot, EmbeddingClient, model_path_from_env
from embellama.engine.engine import EmbeddingEngine
from embellama.engine.truncation import call_offset, one_report_per_call
from embellama.errors import ConfigurationError, InvalidInputError
from embellama.types import Reranking
from embellama_integrations._options import (
    ADAPTER_DEFAULTS,
    MODEL_OPTION_NAMES,
    ClientOptionFields,
    ModelOptionFields,
    model_option_values,
    refuse_unknown,
    resolved_identity,
)

__all__ = ["EmbellamaEmbedding", "EmbellamaRerank"]

dispatcher = get_dispatcher(__name__)


class EmbellamaEmbedding(BaseEmbedding, ModelOptionFields, ClientOptionFields, ClientBacked):
    """Local embeddings from a GGUF model through llama.cpp, for LlamaIndex.

    Every instance with the same model file and model options shares one loaded model (with LangChain
    adapters too). Construction is cheap; the model loads on first use unless ``preload=True``.

    Args:
        model_path: GGUF file. Defaults to ``$EMBELLAMA_MODEL_PATH``, else embellama's default model.
        model_name: With ``engine``: a model already loaded there. Otherwise the registration name
            (defaults to the file name without ``.gguf``).
        engine: An existing ``embellama.EmbeddingEngine`` to share (not serialized). Defaults to the
            process-wide shared engine.
        query_instruction: Prefix added to every query. Defaults to the model family's.
        text_instruction: Prefix added to every document. Defaults to the model family's.
        embed_batch_size: Texts per batch of LlamaIndex's own batching (and its embedding events); embellama's
            engine plans the decodes inside each batch itself. Defaults to LlamaIndex's (10).
        preload: Load the model now instead of on first use.
        **kwargs: Any ``embellama.ModelConfig`` option (``pooling``, ``normalize``, ``dimensions``,
            ``long_text_mode`` (``"truncate"`` by default here), ``max_tokens``, ``n_workers``, ``isolation``, ...),
            and other ``BaseEmbedding`` fields (``callback_manager``, ``num_workers``, ...). Unknown names raise.

    Raises:
        embellama.ConfigurationError: an option is invalid.

    Example:
        .. code-block:: python

            from llama_index.core import Settings, VectorStoreIndex, Document
            from embellama_integrations.llama_index import EmbellamaEmbedding

            Settings.embed_model = EmbellamaEmbedding(model_path="all-MiniLM-L6-v2-f16.gguf")
            index = VectorStoreIndex.from_documents([Document(text="llamas are camelids")])
    """

    model_config = ConfigDict(extra="forbid")

    model_path: str | None = Field(default=None, description="Path to the GGUF file.")
    query_instruction: str | None = Field(
        default=None, description="Prefix added to every query, e.g. 'query: '. Defaults to the model family's."
    )
    text_instruction: str | None = Field(
        default=None, description="Prefix added to every text (document), e.g. 'passage: '. Defaults to the family's."
    )

    _engine: EmbeddingEngine | None = PrivateAttr(default=None)
    _slot: ClientSlot = PrivateAttr(default_factory=ClientSlot)

    def __init__(
        self,
        model_path: str | Path | None = None,
        *,
        model_name: str | None = None,
        engine: EmbeddingEngine | None = None,
        query_instruction: str | None = None,
        text_instruction: str | None = None,
        embed_batch_size: int = DEFAULT_EMBED_BATCH_SIZE,
        preload: bool = False,
        **kwargs: Any,
    ) -> None:
        refuse_unknown(type(self), kwargs)
        if model_path is None and not (engine is not None and model_name is not None):
            model_path = model_path_from_env()
        fields: dict[str, Any] = dict(
            model_path=None if model_path is None else str(model_path),
            model_name=model_name,
            query_instruction=query_instruction,
            text_instruction=text_instruction,
        )
        options = {k: kwargs.pop(k) for k in (*MODEL_OPTION_NAMES, "show_progress", "on_error") if k in kwargs}
        _refuse_collect(options.get("on_error", "raise"))
        by_name = engine is not None and model_path is None
        defaults = {} if by_name else {k: v for k, v in ADAPTER_DEFAULTS.items() if k not in options}
        # validated by the core first, so invalid options raise embellama's ConfigurationError
        probe = EmbeddingClient(**_client_options(fields | defaults | options, engine))
        fields |= resolved_identity(probe)  # show the model in use, not None
        super().__init__(**fields, embed_batch_size=embed_batch_size, **options, **kwargs)
        self._engine = engine
        if preload:
            self.client.preload()

    def __getstate__(self) -> dict[Any, Any]:
        """Pickle the options (the client is rebuilt on the other side); refuse when bound to a private engine,
        which LlamaIndex would otherwise drop silently, leaving the copy on another model."""
        if self._engine is not None:
            raise TypeError(
                "this EmbellamaEmbedding is bound to a private EmbeddingEngine, which cannot cross processes; "
                "build it with model_path=... to pickle it"
            )
        state: dict[Any, Any] = super().__getstate__()
        return state

    @classmethod
    def class_name(cls) -> str:
        """Name used by LlamaIndex's serialization."""
        return "EmbellamaEmbedding"

    @property
    def client(self) -> EmbeddingClient:
        """The ``embellama.engine.client.EmbeddingClient`` doing the work (rebuilt if a field was changed)."""
        _refuse_collect(self.on_error)
        by_name = self._engine is not None and self.model_path is None
        fields = {name: getattr(self, name) for name in _CLIENT_FIELDS} | model_option_values(self, by_name=by_name)
        return self._slot.get(_client_options(fields, self._engine))

    def get_text_embedding_batch(self, texts: list[str], show_progress: bool = False, **kwargs: Any) -> list[Any]:
        """LlamaIndex's batching (by ``embed_batch_size``, with its events), with errors naming the caller's index
        and one embellama progress bar for the whole call (none when LlamaIndex shows its own)."""
        with self._whole_call(texts, show_progress):
            return super().get_text_embedding_batch(texts, show_progress=show_progress, **kwargs)

    async def aget_text_embedding_batch(
        self, texts: list[str], show_progress: bool = False, **kwargs: Any
    ) -> list[Any]:
        """Async twin of :meth:`get_text_embedding_batch`."""
        with self._whole_call(texts, show_progress):
            return await super().aget_text_embedding_batch(texts, show_progress=show_progress, **kwargs)

    @contextmanager
    def _whole_call(self, texts: list[str], framework_bar: bool) -> Iterator[None]:
        """One caller-level call: indices, the progress bar and the truncation warning span its sub-batches."""
        token = _OFFSET.set([0])
        try:
            with self.client.progress_scope(len(texts), enabled=not framework_bar), one_report_per_call():
                yield
        finally:
            _OFFSET.reset(token)

    def _get_query_embedding(self, query: str) -> list[float]:
        return self.client.embed_query(query)

    def _get_text_embedding(self, text: str) -> list[float]:
        return self.client.embed_documents([text])[0]

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        with _callers_index(_claim(len(texts))):
            return self.client.embed_documents(texts)

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return await self.client.aembed_query(query)

    async def _aget_text_embedding(self, text: str) -> list[float]:
        return (await self.client.aembed_documents([text]))[0]

    def _aget_text_embeddings(self, texts: list[str]) -> Coroutine[Any, Any, list[list[float]]]:
        # not ``async def``: the offset is claimed when LlamaIndex starts this batch, in batch order
        return self._aembed_documents_at(texts, _claim(len(texts)))

    async def _aembed_documents_at(self, texts: list[str], start: int) -> list[list[float]]:
        with _callers_index(start):
            return await self.client.aembed_documents(texts)


def _refuse_collect(on_error: str) -> None:
    if on_error == "collect":
        raise ConfigurationError(
            "on_error='collect' is not available with LlamaIndex: its embedding events and nodes need a vector "
            "for every text. Over-long texts are cut by default (long_text_mode='truncate'); to keep going past "
            "other bad input, embed through embellama.EmbeddingEngine.embed_batch(..., on_error='collect')"
        )


# Where the current LlamaIndex sub-batch starts in the caller's list: LlamaIndex splits a call into batches of
# embed_batch_size before the adapter sees them, so an InvalidInputError would otherwise name the index within
# the sub-batch. A mutable box per get_text_embedding_batch call, shared by the tasks it starts.
_OFFSET: ContextVar[list[int] | None] = ContextVar("embellama_llama_index_offset", default=None)


def _claim(n_texts: int) -> int:
    box = _OFFSET.get()
    if box is None:
        return 0
    start = box[0]
    box[0] += n_texts
    return start


@contextmanager
def _callers_index(start: int) -> Iterator[None]:
    try:
        with call_offset(start):
            yield
    except InvalidInputError as exc:
        if start and exc.index is not None:
            raise exc.at_index(start + exc.index) from None
        raise


_CLIENT_FIELDS = (
    "model_path",
    "model_name",
    "query_instruction",
    "text_instruction",
)
_RENAMED = {"text_instruction": "document_instruction"}


def _client_options(fields: dict[str, Any], engine: EmbeddingEngine | None) -> dict[str, Any]:
    """``EmbeddingClient`` keyword arguments from this class's fields (LlamaIndex names some differently)."""
    return {_RENAMED.get(name, name): value for name, value in fields.items()} | {"engine": engine}


class EmbellamaRerank(BaseNodePostprocessor, ModelOptionFields):
    """Rerank retrieved nodes with a local cross-encoder GGUF, for LlamaIndex (a ``BaseNodePostprocessor``).

    Scores every node's text against the query (many pairs per decode), sets ``node.score``, keeps the ``top_n``
    best, and emits the instrumentation (``ReRankStartEvent`` / ``ReRankEndEvent``) and callback events that
    LlamaIndex's own rerankers emit. Every ``embellama.ModelConfig`` option is a field too.

    Example:
        .. code-block:: python

            from embellama_integrations.llama_index import EmbellamaRerank

            reranker = EmbellamaRerank(model_path="reranker.gguf", top_n=3)
            engine = index.as_query_engine(similarity_top_k=20, node_postprocessors=[reranker])
    """

    model_config = ConfigDict(extra="forbid")

    model_path: str | None = Field(default=None, description="Path to the reranker GGUF.")
    model_name: str | None = Field(default=None, description="Registered name (with engine: a loaded reranker).")
    top_n: int | None = Field(default=3, description="How many nodes to keep (the best); None keeps all, reordered.")
    normalize_scores: bool = Field(default=False, description="Sigmoid over single-logit scores (0..1).")
    keep_retrieval_score: bool = Field(default=False, description="Keep the retriever's score in metadata.")

    _engine: EmbeddingEngine | None = PrivateAttr(default=None)
    _slot: ClientSlot = PrivateAttr(default_factory=ClientSlot)

    def __init__(self, model_path: str | Path | None = None, *, engine: EmbeddingEngine | None = None, **data: Any):
        refuse_unknown(type(self), data)
        if model_path is None and not (engine is not None and data.get("model_name") is not None):
            model_path = model_path_from_env()
        options = {k: data.pop(k) for k in MODEL_OPTION_NAMES if k in data}
        by_name = engine is not None and model_path is None
        defaults = {} if by_name else {k: v for k, v in ADAPTER_DEFAULTS.items() if k not in options}
        probe = EmbeddingClient(
            model_path=model_path, engine=engine, model_name=data.get("model_name"), **defaults, **options
        )  # validated by the core first, so invalid options raise embellama's ConfigurationError
        super().__init__(**(data | resolved_identity(probe)), **options)
        self._engine = engine

    @classmethod
    def class_name(cls) -> str:
        """Name used by LlamaIndex's serialization."""
        return "EmbellamaRerank"

    @property
    def client(self) -> EmbeddingClient:
        """The ``embellama.engine.client.EmbeddingClient`` doing the work (rebuilt if a field was changed)."""
        by_name = self._engine is not None and self.model_path is None
        options = model_option_values(self, by_name=by_name)
        return self._slot.get(
            dict(model_path=self.model_path, engine=self._engine, model_name=self.model_name, **options)
        )

    def _postprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        query, texts = self._inputs(nodes, query_bundle)
        with self._events(nodes, query) as finish:
            ranking = (
                self.client.rerank(query, texts, top_n=self.top_n, normalize=self.normalize_scores) if nodes else None
            )
            return finish(ranking)

    async def _apostprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        query, texts = self._inputs(nodes, query_bundle)
        with self._events(nodes, query) as finish:
            ranking = (
                await self.client.arerank(query, texts, top_n=self.top_n, normalize=self.normalize_scores)
                if nodes
                else None
            )
            return finish(ranking)

    @staticmethod
    def _inputs(nodes: list[NodeWithScore], query_bundle: QueryBundle | None) -> tuple[str, list[str]]:
        if query_bundle is None:
            raise ValueError("EmbellamaRerank needs the query (a query_bundle or query_str)")
        return query_bundle.query_str, [n.node.get_content(metadata_mode=MetadataMode.EMBED) for n in nodes]

    @contextmanager
    def _events(
        self, nodes: list[NodeWithScore], query: str
    ) -> Iterator[Callable[[Reranking | None], list[NodeWithScore]]]:
        dispatcher.event(
            ReRankStartEvent(query=query, nodes=nodes, top_n=self.top_n or len(nodes), model_name=self.model_name or "")
        )
        with self.callback_manager.event(
            CBEventType.RERANKING,
            payload={
                EventPayload.NODES: nodes,
                EventPayload.MODEL_NAME: self.model_name,
                EventPayload.QUERY_STR: query,
                EventPayload.TOP_K: self.top_n,
            },
        ) as event:

            def finish(ranking: Reranking | None) -> list[NodeWithScore]:
                kept: list[NodeWithScore] = []
                for ranked in ranking.top if ranking is not None else []:
                    node = nodes[ranked.index]
                    if self.keep_retrieval_score:
                        node.node.metadata["retrieval_score"] = node.score
                    node.score = ranked.score
                    kept.append(node)
                event.on_end(payload={EventPayload.NODES: kept})
                dispatcher.event(ReRankEndEvent(nodes=kept))
                return kept

            yield finish
