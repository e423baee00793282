"""EmbeddingModel on the real default model: lifecycle, metadata, tokenization, truncation."""

from __future__ import annotations

import gc
from pathlib import Path

import numpy as np
import pytest

from embellama import ConfigurationError, EmbeddingError, EmbeddingModel, InvalidInputError, ModelConfig, Pooling
from embellama.files.gguf import file_fingerprint, read_header


@pytest.fixture(scope="module")
def model(model_path: Path) -> EmbeddingModel:
    m = EmbeddingModel(ModelConfig(model_path=model_path)).load()
    yield m  # type: ignore[misc]
    m.unload()


def test_metadata(model: EmbeddingModel, model_path: Path) -> None:
    assert model.is_loaded
    assert model.architecture == "bert"
    assert model.embedding_dimensions == model.native_dimensions == 384
    assert model.max_sequence_length == 256  # sentence-transformers' max_seq_length, recorded in the GGUF
    assert model.model_size == model_path.stat().st_size
    assert model.model_pooling is Pooling.MEAN and model.pooling is Pooling.MEAN
    assert model.metadata["general.architecture"] == "bert"
    assert len(model.fingerprint) == 16


def test_tokenize_adds_cls_and_sep(model: EmbeddingModel) -> None:
    ids = model.tokenize("hello world")
    assert ids[0] == 101 and ids[-1] == 102 and len(ids) == 4
    assert model.tokenize("") == [101, 102]
    # non-ASCII goes through the BERT-exact WordPiece path and keeps the same framing
    korean = model.tokenize("한국어")
    assert korean[0] == 101 and korean[-1] == 102 and len(korean) > 3


def test_lifecycle(model_path: Path) -> None:
    m = EmbeddingModel(ModelConfig(model_path=model_path))
    assert not m.is_loaded
    with pytest.raises(EmbeddingError, match="not loaded"):
        _ = m.embedding_dimensions
    with m:
        assert m.is_loaded
        assert m.load() is m  # idempotent
        first = m.embed(["a sentence"])
    assert not m.is_loaded
    m.unload()  # idempotent
    with m:
        np.testing.assert_allclose(m.embed(["a sentence"]), first, atol=1e-6)


def test_garbage_collection_frees_the_model(model_path: Path) -> None:
    m = EmbeddingModel(ModelConfig(model_path=model_path)).load()
    del m
    gc.collect()  # __del__ unloads; nothing to assert but that it does not crash


def test_truncation_policy(model_path: Path) -> None:
    long_text = "word " * 400  # 402 tokens
    with EmbeddingModel(ModelConfig(model_path=model_path)) as strict:
        with pytest.raises(InvalidInputError) as info:
            strict.prepare_input(long_text)
        err = info.value
        assert (err.index, err.n_tokens, err.limit) == (None, 402, 256)
        assert "402 tokens" in str(err) and "256" in str(err)
        with pytest.raises(InvalidInputError) as info:
            strict.embed(["a short text", long_text])  # the round names the caller's index
        assert (info.value.index, info.value.n_tokens) == (1, 402) and "index 1" in str(info.value)
    with EmbeddingModel(ModelConfig(model_path=model_path, long_text_mode="truncate")) as lenient:
        tokens = lenient.prepare_input(long_text).tokens
        assert len(tokens) == 256 and tokens[0] == 101 and tokens[-1] == 102  # [SEP] kept
        cut = lenient.embed([long_text])
        exact = lenient.embed_tokens([tokens])
        np.testing.assert_allclose(cut, exact, atol=1e-6)


def test_max_tokens_lowers_the_limit(model_path: Path) -> None:
    with EmbeddingModel(ModelConfig(model_path=model_path, max_tokens=16)) as m:
        assert m.max_sequence_length == 16
        with pytest.raises(InvalidInputError, match="limit of 16"):
            m.embed(["one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen"])
    with pytest.raises(ConfigurationError, match="exceeds the model's limit"):
        EmbeddingModel(ModelConfig(model_path=model_path, max_tokens=300)).load()


def test_dimensions_larger_than_model_are_refused(model_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="384"):
        EmbeddingModel(ModelConfig(model_path=model_path, dimensions=1000)).load()


def test_matryoshka_dimensions(model_path: Path) -> None:
    with EmbeddingModel(ModelConfig(model_path=model_path, normalize=False)) as full:
        raw = full.embed(["matryoshka dolls"])
    with EmbeddingModel(ModelConfig(model_path=model_path, dimensions=64)) as small:
        assert small.embedding_dimensions == 64
        vec = small.embed(["matryoshka dolls"])
    assert vec.shape == (1, 64)
    np.testing.assert_allclose(vec[0], raw[0, :64] / np.linalg.norm(raw[0, :64]), atol=1e-5)


def test_last_pooling_is_the_sep_token(model_path: Path) -> None:
    with EmbeddingModel(ModelConfig(model_path=model_path, pooling="last", normalize=False)) as last:
        v_last = last.embed(["pooling check", "another"])
    with EmbeddingModel(ModelConfig(model_path=model_path, pooling="cls", normalize=False)) as cls:
        v_cls = cls.embed(["pooling check", "another"])
    assert v_last.shape == v_cls.shape == (2, 384)
    assert not np.allclose(v_last, v_cls)


def test_gpu_layers_on_cpu_build(model_path: Path) -> None:
    import llama_cpp

    if llama_cpp.llama_supports_gpu_offload():  # pragma: no cover - GPU builds
        pytest.skip("this build supports GPU offload")
    with pytest.raises(ConfigurationError, match="no GPU support"):
        EmbeddingModel(ModelConfig(model_path=model_path, n_gpu_layers=10)).load()


def test_gguf_header_of_default_model(model_path: Path) -> None:
    header = read_header(model_path)
    assert header.architecture == "bert"
    assert header.metadata["embellama.max_seq_length"] == 256
    assert header.arch_value("embedding_length") == 384
    assert header.metadata["tokenizer.ggml.tokens"] == "<array[30522]>"
    assert len(file_fingerprint(model_path)) == 16
