"""Make weight-type variants of a GGUF (Q8_0, Q4_K_M, BF16, ...) with llama.cpp's quantizer."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

import llama_cpp

from embellama.errors import ConfigurationError, ModelLoadError
from embellama.files.cache_folder import staging_dir
from embellama.files.gguf import check_model_file

__all__ = ["WEIGHT_TYPES", "quantize_model"]

WEIGHT_TYPES: dict[str, int] = {
    "F32": llama_cpp.LLAMA_FTYPE_ALL_F32,
    "F16": llama_cpp.LLAMA_FTYPE_MOSTLY_F16,
    "BF16": llama_cpp.LLAMA_FTYPE_MOSTLY_BF16,
    "Q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0,
    "Q6_K": llama_cpp.LLAMA_FTYPE_MOSTLY_Q6_K,
    "Q5_K_M": llama_cpp.LLAMA_FTYPE_MOSTLY_Q5_K_M,
    "Q4_K_M": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M,
    "Q4_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0,
}
"""Weight types by name (llama.cpp's ``LLAMA_FTYPE_*``)."""


def quantize_model(source: str | Path, target: str | Path, weight_type: str = "Q8_0", *, threads: int = 0) -> Path:
    """Write ``source`` re-encoded as ``weight_type`` to ``target`` (atomically: llama.cpp writes into a fresh
    ``0700`` folder beside ``target``, where nothing can be planted, then the file is renamed into place).

    Quality and speed of each type on the default model: docs/performance.md ("Weight types", "Why the defaults").

    Raises:
        ConfigurationError: unknown ``weight_type``.
        ModelNotFoundError, ModelLoadError: the source is missing or llama.cpp fails.
    """
    key = weight_type.upper()
    if key not in WEIGHT_TYPES:
        raise ConfigurationError(f"unknown weight_type {weight_type!r}; valid: {', '.join(WEIGHT_TYPES)}")
    source, target = Path(source), Path(target)
    check_model_file(source)
    target.parent.mkdir(parents=True, exist_ok=True)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = WEIGHT_TYPES[key]
    params.nthread = threads
    with staging_dir(target.parent, ".quantizing-") as stage:
        tmp = stage / target.name
        rc = llama_cpp.llama_model_quantize(str(source).encode(), str(tmp).encode(), ctypes.byref(params))
        if rc != 0 or not tmp.is_file():
            raise ModelLoadError(f"llama.cpp failed to quantize {source} to {key} (code {rc})")
        os.replace(tmp, target)
    return target
