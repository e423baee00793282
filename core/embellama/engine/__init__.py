"""The request path: the public engine, its model registry, the request, planning, truncation reports and the cache.

It knows worker pools (:mod:`embellama.runtime`) but not llama.cpp. :class:`EmbeddingEngine` is the public face;
:class:`~embellama.engine.client.EmbeddingClient` is what the LangChain and LlamaIndex adapters delegate to.
"""

from embellama.engine.engine import EmbeddingEngine

__all__ = ["EmbeddingEngine"]
