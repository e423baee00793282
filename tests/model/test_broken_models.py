"""Broken model files and configurations: each is a typed error, nothing crashes, no thread or fd leaks."""

from __future__ import annotations

import struct
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import llama_cpp
import numpy as np
import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from embellama import (
    ConfigurationError,
    EmbeddingEngine,
    EmbeddingModel,
    EmbellamaError,
    InvalidInputError,
    ModelConfig,
    ModelLoadError,
    ModelNotFoundError,
)


def _patched(src: Path, dst: Path, key: bytes, new: bytes, skip: int) -> Path:
    """Copy ``src`` to ``dst`` with the bytes ``skip`` after metadata ``key`` replaced by ``new``."""
    data = bytearray(src.read_bytes())
    at = data.index(key) + len(key) + skip
    data[at : at + len(new)] = new
    dst.write_bytes(bytes(data))
    return dst


@pytest.fixture(scope="module")
def broken_files(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("broken")
    data = model_path.read_bytes()
    files = {
        "empty": d / "empty.gguf",
        "not_gguf": d / "notes.gguf",
        "truncated_header": d / "truncated_header.gguf",
        "truncated_tensors": d / "truncated_tensors.gguf",
    }
    files["empty"].write_bytes(b"")
    files["not_gguf"].write_text("this is a text file, not a model\n" * 100)
    files["truncated_header"].write_bytes(data[:200])
    files["truncated_tensors"].write_bytes(data[: len(data) // 2])
    # bert.pooling_type is a u32 (type tag 4, then the value)
    files["rank_pooling"] = _patched(model_path, d / "reranker.gguf", b"bert.pooling_type", struct.pack("<I", 4), 4)
    files["no_pooling"] = _patched(model_path, d / "no_pooling.gguf", b"bert.pooling_type", struct.pack("<I", 0), 4)
    # general.architecture: type tag (4), length (8), then the string
    files["unknown_arch"] = _patched(model_path, d / "unknown_arch.gguf", b"general.architecture", b"zzzz", 12)
    files["bad_version"] = d / "bad_version.gguf"
    files["bad_version"].write_bytes(data[:4] + struct.pack("<I", 99) + data[8:4096])
    return files


@pytest.fixture
def no_leaks() -> Iterator[None]:
    """Fail the test if it leaves threads or open file descriptors behind."""
    proc = psutil.Process()
    threads, fds = threading.active_count(), proc.num_fds()
    yield
    assert threading.active_count() == threads, threading.enumerate()
    assert proc.num_fds() <= fds, proc.open_files()


CASES: list[tuple[str, dict[str, Any], type[EmbellamaError], str]] = [
    ("empty", {}, ModelLoadError, "empty"),
    ("not_gguf", {}, ModelLoadError, "not a GGUF file"),
    ("truncated_header", {}, ModelLoadError, "malformed GGUF header"),
    ("truncated_tensors", {}, ModelLoadError, "tensor info #.* extends past the end of the file"),
    ("rank_pooling", {}, ModelLoadError, "RANK pooling"),
    ("no_pooling", {}, ConfigurationError, "records no pooling type"),
    ("unknown_arch", {"pooling": "mean"}, ModelLoadError, "could not load"),
    ("bad_version", {}, ModelLoadError, "unsupported GGUF version 99"),
]


@pytest.mark.parametrize(("name", "options", "error", "words"), CASES, ids=[c[0] for c in CASES])
def test_broken_file_is_a_typed_error(
    broken_files: dict[str, Path], no_leaks: None, name: str, options: dict[str, Any], error: type, words: str
) -> None:
    with EmbeddingEngine() as engine:
        with pytest.raises(error, match=words):
            engine.load_model(ModelConfig(model_path=broken_files[name], model_name="broken", **options))
        assert engine.models == {}
    with pytest.raises(error, match=words):
        EmbeddingModel(ModelConfig(model_path=broken_files[name], **options)).load()


def test_missing_path_and_directory(tmp_path: Path, no_leaks: None) -> None:
    with EmbeddingEngine() as engine:
        with pytest.raises(ModelNotFoundError, match="not found"):
            engine.load_model(model_path=tmp_path / "nope.gguf")
        with pytest.raises(ModelLoadError, match="directory"):
            engine.load_model(model_path=tmp_path)
        with pytest.raises(ModelNotFoundError):
            engine.embed("nope", "x")


def test_unsupported_pooling_and_option_values(model_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="unknown pooling 'bogus'"):
        ModelConfig(model_path=model_path, pooling="bogus")
    bad: list[dict[str, Any]] = [
        {"batch_tokens": 0},
        {"batch_tokens": 1 << 17},
        {"max_texts_per_decode": 257},
        {"n_workers": 0},
        {"n_threads": -1},
        {"dimensions": 0},
        {"n_gpu_layers": -2},
        {"isolation": "fork"},
        {"crash_retries": -1},
        {"normalize": "yes"},
        {"model_path": ""},
        {"model_name": ""},
    ]
    for options in bad:
        with pytest.raises(ConfigurationError):
            ModelConfig(**{"model_path": model_path, **options})


def test_dimensions_above_the_model_width(model_path: Path, no_leaks: None) -> None:
    with EmbeddingEngine() as engine, pytest.raises(ConfigurationError, match="exceeds the model's 384"):
        engine.load_model(model_path=model_path, dimensions=385)


def test_gpu_layers_on_cpu_only_build(model_path: Path, no_leaks: None) -> None:
    if llama_cpp.llama_supports_gpu_offload():  # pragma: no cover - this machine's build is CPU-only
        pytest.skip("this llama-cpp-python build supports GPU offload")
    for layers in (1, -1):
        with EmbeddingEngine() as engine, pytest.raises(ConfigurationError, match="no GPU support"):
            engine.load_model(model_path=model_path, n_gpu_layers=layers)


def test_max_tokens_above_the_model_limit(model_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="exceeds the model's limit of 256"):
        EmbeddingModel(ModelConfig(model_path=model_path, max_tokens=300)).load()


def test_failed_loads_leave_nothing_behind(broken_files: dict[str, Path], model_path: Path) -> None:
    """Repeated failures (fd and thread counts checked after a warm-up round) and the engine still loads."""
    proc = psutil.Process()

    def fail_all(engine: EmbeddingEngine) -> None:
        for name, options, error, _ in CASES:
            with pytest.raises(error):
                engine.load_model(ModelConfig(model_path=broken_files[name], model_name=name, **options))

    with EmbeddingEngine() as engine:
        fail_all(engine)
        threads, fds = threading.active_count(), proc.num_fds()
        for _ in range(3):
            fail_all(engine)
        assert (threading.active_count(), proc.num_fds()) == (threads, fds)
        engine.load_model(model_path=model_path, model_name="ok")
        assert len(engine.embed("ok", "works after failures")) == 384


# ---------------------------------------------------------------------- GGML_ASSERT combinations
_ASSERT_SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@_ASSERT_SETTINGS
@given(
    batch_tokens=st.sampled_from([1, 2, 7, 8, 16, 255, 256, 257, 300, 512]),
    max_texts=st.sampled_from([1, 2, 3, 7, 8, 16, 64, 256]),
    max_tokens=st.sampled_from([None, 1, 2, 3, 16, 256]),
    long_text_mode=st.sampled_from(["raise", "truncate"]),
    pooling=st.sampled_from(["model", "mean", "cls", "last", "max", "mean_sqrt_len"]),
)
def test_option_combinations_are_refused_or_safe(
    model_path: Path, batch_tokens: int, max_texts: int, max_tokens: int | None, long_text_mode: str, pooling: str
) -> None:
    """Any combination either fails validation up front or embeds every input length without aborting.

    Runs in this process on purpose: a combination that tripped a GGML_ASSERT would kill the test run.
    """
    try:
        config = ModelConfig(
            model_path=model_path,
            batch_tokens=batch_tokens,
            max_texts_per_decode=max_texts,
            max_tokens=max_tokens,
            long_text_mode=long_text_mode,
            pooling=pooling,
        )
    except ConfigurationError:
        assert max_texts > batch_tokens
        return
    texts = ["", "a", "a " * 3, "a " * 20, "word " * 300] * 3
    with EmbeddingModel(config) as model:
        limit = model.max_sequence_length
        try:
            rows = model.embed(texts)
        except InvalidInputError as exc:
            assert long_text_mode == "raise" and exc.n_tokens is not None and exc.n_tokens > limit
            rows = model.embed([t for t in texts if len(model.tokenize(t)) <= limit])
    assert np.isfinite(rows).all() and rows.shape[1] == 384
