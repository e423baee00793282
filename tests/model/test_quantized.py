"""Quantized variants of the default model load and embed (this build has no AMX crash), Q8_0 stays close."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from embellama import ConfigurationError, EmbeddingModel, ModelConfig
from embellama.files.gguf import read_header
from embellama.model.native import amx_crash_risk
from embellama.model.quantize import quantize_model
from tests.fixtures.texts import varied_texts


@pytest.fixture(scope="module")
def f16_vectors(model_path: Path) -> np.ndarray:
    with EmbeddingModel(ModelConfig(model_path=model_path)) as m:
        return m.embed(varied_texts())


@pytest.mark.parametrize(("kind", "min_cosine"), [("Q8_0", 0.99), ("Q4_K_M", 0.90)])
def test_quantized_variant_embeds_close_to_f16(
    model_path: Path, quantized_paths: dict[str, Path], f16_vectors: np.ndarray, kind: str, min_cosine: float
) -> None:
    path = quantized_paths[kind]
    assert read_header(path).metadata["general.file_type"] not in (0, 1, 32)  # really quantized
    assert read_header(path).metadata["embellama.max_seq_length"] == 256  # our key survives quantization
    assert path.stat().st_size < model_path.stat().st_size
    with EmbeddingModel(ModelConfig(model_path=path)) as m:
        vectors = m.embed(varied_texts())
    cos = (vectors * f16_vectors).sum(1)
    assert np.isfinite(vectors).all()
    assert cos.min() >= min_cosine, f"{kind}: min cosine {cos.min():.4f}"


def test_quantize_rejects_unknown_type(model_path: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="Q8_0"):
        quantize_model(model_path, tmp_path / "x.gguf", "Q3_XYZ")
    assert list(tmp_path.iterdir()) == []


def test_this_build_is_not_crash_prone() -> None:
    # the project builds llama-cpp-python without AMX kernels, so quantized models are allowed here
    assert amx_crash_risk() is None


def test_amx_crash_risk_detection() -> None:
    info = "CPU : AVX2 = 1 | AMX_INT8 = 1 | "
    assert amx_crash_risk(info, {"avx2", "avx512f"}) is not None  # CPUID says AMX, OS does not enable it
    assert amx_crash_risk(info, {"avx2", "amx_tile", "amx_int8"}) is None  # real AMX
    assert amx_crash_risk("CPU : AVX2 = 1 | ", {"avx2"}) is None  # no AMX kernels compiled
