"""embellama: local GGUF text embeddings for RAG, on llama.cpp.

Example:
    >>> from embellama import EmbeddingEngine, ModelConfig, default_model_path
    >>> with EmbeddingEngine() as engine:  # doctest: +SKIP
    ...     engine.load_model(ModelConfig(model_path=default_model_path(), model_name="minilm"))
    ...     engine.embed("minilm", "hello world")[:3]
"""

import logging

from embellama.config import EngineConfig, ModelConfig, Pooling
from embellama.engine.cache import CacheStats
from embellama.engine.client import EmbeddingClient, shared_engine
from embellama.engine.engine import EmbeddingEngine
from embellama.errors import (
    ConfigurationError,
    EmbeddingError,
    EmbellamaError,
    EngineClosedError,
    InvalidInputError,
    ModelCrashedError,
    ModelLoadError,
    ModelNotFoundError,
    ModelTimeoutError,
)
from embellama.files.default_model import default_model_path
from embellama.model.embedding import EmbeddingModel
from embellama.types import BatchResult, ModelInfo, RankedDocument, Reranking

__version__ = "0.1.0"

# a library never prints through logging's last-resort handler: the application configures logging
logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "BatchResult",
    "CacheStats",
    "ConfigurationError",
    "EmbeddingClient",
    "EmbeddingEngine",
    "EmbeddingError",
    "EmbeddingModel",
    "EmbellamaError",
    "EngineClosedError",
    "EngineConfig",
    "InvalidInputError",
    "ModelConfig",
    "ModelCrashedError",
    "ModelInfo",
    "ModelLoadError",
    "ModelNotFoundError",
    "ModelTimeoutError",
    "Pooling",
    "RankedDocument",
    "Reranking",
    "__version__",
    "default_model_path",
    "shared_engine",
]
