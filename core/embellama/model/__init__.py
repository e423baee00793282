"""One model instance, used by one thread: the only package that imports ``llama_cpp``.

:class:`EmbeddingModel` implements the model contract (:mod:`embellama.model.contract`) on llama.cpp through the
native wrappers (:mod:`embellama.model.native`).
"""

from embellama.model.embedding import EmbeddingModel

__all__ = ["EmbeddingModel"]
