"""Framework adapters over the embellama core; each module imports only its own framework.

- ``embellama_integrations.langchain.EmbellamaEmbeddings``: a LangChain ``Embeddings`` (extra ``langchain``).
- ``embellama_integrations.llama_index.EmbellamaEmbedding``: a LlamaIndex ``BaseEmbedding`` (extra ``llama-index``).

Both delegate to :class:`embellama.engine.client.EmbeddingClient`, so objects of either framework pointing at the same
model file and options share one loaded model.
"""
