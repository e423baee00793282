"""Model families as data: what each embedding family needs that the GGUF may not say.

A family is recognised from GGUF metadata (``general.architecture``, ``general.name`` / ``basename``, the pooling
type) and says which pooling, end-of-sequence rule, query/document prompts and Matryoshka sizes apply. Everything
here is a default: a user's explicit ``pooling``, ``prompts`` or ``add_eos`` wins. Add a family by adding a
:class:`ModelFamily` to :data:`FAMILIES` (the first match wins; the generic entries come last).

Prompts follow sentence-transformers' convention: a mapping of named prompts, where ``"query"`` and
``"document"`` are the roles RAG frameworks use.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

__all__ = ["FAMILIES", "NON_CAUSAL_ARCHITECTURES", "ModelFamily", "detect_family", "is_causal"]

NON_CAUSAL_ARCHITECTURES = frozenset(
    {
        "bert",
        "nomic-bert",
        "nomic-bert-moe",
        "jina-bert-v2",
        "jina-bert-v3",
        "modern-bert",
        "neo-bert",
        "t5encoder",
        "gemma-embedding",
        "eurobert",
    }
)
"""Architectures llama.cpp runs with bidirectional attention (a GGUF's ``{arch}.attention.causal`` wins)."""


@dataclass(frozen=True)
class ModelFamily:
    """What one family of embedding models needs."""

    name: str
    """Short name shown by ``embellama info`` and ``ModelInfo.family``."""
    architectures: frozenset[str] = frozenset()
    """``general.architecture`` values this family uses (empty: any)."""
    name_pattern: str | None = None
    """Regular expression matched (case-insensitively) against ``general.name`` and ``general.basename``."""
    pooling: str | None = None
    """Pooling to apply when the GGUF records none, or records a wrong one for this family."""
    override_gguf_pooling: bool = False
    """Whether :attr:`pooling` wins over the GGUF's own pooling type (it is known to be missing or wrong)."""
    add_eos: bool | None = None
    """Append the end-of-sequence token to every input (None: as the GGUF's tokenizer says)."""
    prompts: dict[str, str] = field(default_factory=dict)
    """Named prompts; ``"query"`` and ``"document"`` are used for RAG roles."""
    dimensions: tuple[int, ...] = ()
    """Matryoshka sizes the family was trained for (empty: unknown)."""
    source: str = ""
    """Where the settings come from (model card), for the families table in docs/families.md."""

    def matches(self, metadata: dict[str, Any]) -> bool:
        """Whether a GGUF with this metadata belongs to the family."""
        arch = str(metadata.get("general.architecture", ""))
        if self.architectures and arch not in self.architectures:
            return False
        if self.name_pattern is None:
            return True
        names = " ".join(str(metadata.get(k, "")) for k in ("general.name", "general.basename", "general.finetune"))
        return re.search(self.name_pattern, names, re.IGNORECASE) is not None


_QWEN3_QUERY = "Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery:"

FAMILIES: tuple[ModelFamily, ...] = (
    ModelFamily(
        "qwen3-embedding",
        frozenset({"qwen3"}),
        r"qwen3[-_ ]?embedding",
        pooling="last",
        override_gguf_pooling=True,
        add_eos=True,
        prompts={"query": _QWEN3_QUERY, "document": ""},
        dimensions=(32, 64, 128, 256, 512, 768, 1024, 2048, 2560, 4096),
        source="Qwen/Qwen3-Embedding model card: last-token pooling over an appended <|endoftext|>",
    ),
    ModelFamily(
        "gte-qwen2",
        frozenset({"qwen2"}),
        r"gte[-_ ]?qwen2",
        pooling="last",
        override_gguf_pooling=True,
        add_eos=True,
        prompts={"query": _QWEN3_QUERY, "document": ""},
        source="Alibaba-NLP/gte-Qwen2 model card",
    ),
    ModelFamily(
        "embeddinggemma",
        frozenset({"gemma-embedding"}),
        pooling="mean",
        prompts={"query": "task: search result | query: ", "document": "title: none | text: "},
        dimensions=(128, 256, 512, 768),
        source="google/embeddinggemma-300m model card",
    ),
    ModelFamily(
        "embeddinggemma",
        frozenset({"gemma3"}),
        r"embedding[-_ ]?gemma|gemma[-_ ]?embedding",
        pooling="mean",
        prompts={"query": "task: search result | query: ", "document": "title: none | text: "},
        dimensions=(128, 256, 512, 768),
        source="google/embeddinggemma-300m model card (older GGUFs say gemma3)",
    ),
    ModelFamily(
        "nomic-embed",
        frozenset({"nomic-bert", "nomic-bert-moe"}),
        pooling="mean",
        prompts={"query": "search_query: ", "document": "search_document: "},
        dimensions=(64, 128, 256, 512, 768),
        source="nomic-ai/nomic-embed-text-v1.5 model card",
    ),
    ModelFamily(
        "e5",
        frozenset(),
        r"(^|[-_ ])e5([-_ ]|$)",
        prompts={"query": "query: ", "document": "passage: "},
        source="intfloat/e5 model cards",
    ),
    ModelFamily(
        "bge-en-v1.5",
        frozenset({"bert"}),
        r"bge[-_ ].*en[-_ ]v1\.5",
        pooling="cls",
        prompts={"query": "Represent this sentence for searching relevant passages: ", "document": ""},
        source="BAAI/bge-*-en-v1.5 model cards",
    ),
    ModelFamily(
        "bge-m3",
        frozenset({"xlm-roberta", "bert"}),
        r"bge[-_ ]?m3",
        pooling="cls",
        source="BAAI/bge-m3 model card (dense retrieval: CLS)",
    ),
    ModelFamily("jina-v2", frozenset({"jina-bert-v2"}), pooling="mean", source="jinaai/jina-embeddings-v2 cards"),
    ModelFamily("modernbert", frozenset({"modern-bert"}), pooling="mean"),
    ModelFamily("bert", NON_CAUSAL_ARCHITECTURES | {"xlm-roberta"}),
    ModelFamily("decoder", frozenset(), pooling="last", source="decoder LMs used as embedders: last-token pooling"),
)


def detect_family(metadata: dict[str, Any]) -> ModelFamily:
    """The first family of :data:`FAMILIES` that matches a GGUF's metadata (the generic decoder last)."""
    for family in FAMILIES:
        if family.matches(metadata):
            return family
    raise AssertionError("the generic decoder family matches every model")  # pragma: no cover


def is_causal(metadata: dict[str, Any]) -> bool:
    """Whether llama.cpp runs this model with causal attention (decoders) rather than bidirectional (encoders)."""
    arch = str(metadata.get("general.architecture", ""))
    recorded = metadata.get(f"{arch}.attention.causal")
    if recorded is not None:
        return bool(recorded)
    return arch not in NON_CAUSAL_ARCHITECTURES and arch != "xlm-roberta"
