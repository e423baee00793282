"""Test-only hook for process-isolation children (on PYTHONPATH only while test_isolation runs).

With ``EMBELLAMA_TEST_ABORT_MARKER`` set, a child asked to embed exactly that text trips a genuine ``GGML_ASSERT``:
it decodes one sequence longer than the context's ``n_ubatch``, bypassing the validation that prevents it. This
keeps the crash probe out of the shipped package.
"""

from __future__ import annotations

import os
from typing import Any

MARKER = os.environ.get("EMBELLAMA_TEST_ABORT_MARKER")

if MARKER:
    import llama_cpp
    import numpy as np

    from embellama import _native
    from embellama.errors import EmbeddingError
    from embellama.model import EmbeddingModel

    _prepare = EmbeddingModel.prepare_input

    def _prepare_or_abort(self: EmbeddingModel, text: str, prompt: str = "") -> Any:
        if text != MARKER:
            return _prepare(self, text, prompt)
        n = self._budget + 1
        token = self.tokenize("a")[0]
        batch = _native.DecodeBatch(n, 1)
        batch.fill([np.full(n, token, dtype=np.int32)])
        assert self._context is not None
        llama_cpp.llama_encode(self._context.ctx, batch.batch)
        raise EmbeddingError("llama.cpp did not abort on an over-long batch")

    EmbeddingModel.prepare_input = _prepare_or_abort  # type: ignore[method-assign]
