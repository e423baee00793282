"""EmbeddingClient: the shared core of both adapters, on the real default model."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from embellama import ConfigurationError, EmbeddingEngine, InvalidInputError, ModelConfig, ModelNotFoundError
from embellama.engine.client import EmbeddingClient, shared_engine
from embellama.files.default_model import default_model_file
from tests.conftest import BATCH_TOL, MODEL_NAME


@pytest.fixture(scope="module")
def private_engine() -> Any:
    """An engine of this module's own (cache off), so sharing can be counted exactly."""
    with EmbeddingEngine(cache_size=0) as eng:
        yield eng


def test_construction_is_lazy_and_loads_on_first_use(tmp_path: Path) -> None:
    missing = tmp_path / "nope.gguf"
    client = EmbeddingClient(missing)  # no file is touched yet
    assert client.model_name == "nope"
    assert client.model_path == missing
    with pytest.raises(ModelNotFoundError):
        client.embed_query("hello")


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"batch_size": 8}, r"'batch_size'.*batch_tokens"),
        ({"device": "cpu"}, r"'device'.*n_gpu_layers"),
        ({"pooling": "median"}, "pooling"),
        ({"dimensions": 0}, "dimensions"),
        ({"n_workers": 0}, "n_workers"),
        ({"normalize": "yes"}, "normalize"),
        ({"query_instruction": 3}, "query_instruction"),
        ({"show_progress": "no"}, "show_progress"),
        ({"engine": "not an engine"}, "engine"),
    ],
)
def test_invalid_options_raise_configuration_error(model_path: Path, options: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        EmbeddingClient(model_path, **options)


def test_registered_model_by_name(engine: EmbeddingEngine) -> None:
    client = EmbeddingClient(engine=engine, model_name=MODEL_NAME)
    assert client.model_name == MODEL_NAME
    assert client.engine is engine
    assert client.model_path == Path(engine.model_info(MODEL_NAME).path)
    texts = ["a cat sat on the mat", "stock markets fell"]
    assert client.embed_documents(texts) == engine.embed_batch(MODEL_NAME, texts)
    assert client.embed_query("hello") == engine.embed(MODEL_NAME, "hello")
    assert "registered" in repr(client)


def test_registered_model_refuses_model_options_and_unknown_names(engine: EmbeddingEngine) -> None:
    with pytest.raises(ConfigurationError, match="normalize"):
        EmbeddingClient(engine=engine, model_name=MODEL_NAME, normalize=False)
    with pytest.raises(ModelNotFoundError):
        EmbeddingClient(engine=engine, model_name="no-such-model")


def test_instruction_prefixes_are_applied(engine: EmbeddingEngine) -> None:
    client = EmbeddingClient(
        engine=engine, model_name=MODEL_NAME, query_instruction="query: ", document_instruction="passage: "
    )
    assert client.embed_query("llamas") == engine.embed(MODEL_NAME, "query: llamas")
    assert client.embed_documents(["llamas"]) == [engine.embed(MODEL_NAME, "passage: llamas")]
    assert client.embed_query("llamas") != engine.embed(MODEL_NAME, "llamas")


def test_output_is_python_floats_in_order(engine: EmbeddingEngine) -> None:
    client = EmbeddingClient(engine=engine, model_name=MODEL_NAME)
    texts = [f"sentence number {i} about topic {i % 4}" for i in range(10)]
    vectors = client.embed_documents(texts)
    assert len(vectors) == 10
    assert all(type(x) is float for v in vectors for x in v)
    # order kept; packing changes the last bits: max abs difference ~1.2e-4 with F16 weights, ~8e-4 with BF16 ones
    # (the default on AVX512_BF16 CPUs: llama.cpp rounds the matmuls' activations to BF16 too)
    for text, vector in zip(texts, vectors, strict=True):
        assert np.allclose(vector, engine.embed(MODEL_NAME, text), atol=BATCH_TOL)
    assert client.embed_documents([]) == []


def test_batch_error_names_the_callers_index(engine: EmbeddingEngine) -> None:
    client = EmbeddingClient(engine=engine, model_name=MODEL_NAME)
    texts = ["short"] * 7 + ["word " * 2000] + ["short"]
    with pytest.raises(InvalidInputError) as info:
        client.embed_documents(texts)
    assert info.value.index == 7
    with pytest.raises(InvalidInputError) as info:
        client.embed_documents(["ok", 5])  # type: ignore[list-item]
    assert info.value.index == 1
    with pytest.raises(InvalidInputError):
        client.embed_documents("a single string")


async def test_async_batch_error_names_the_callers_index(engine: EmbeddingEngine) -> None:
    client = EmbeddingClient(engine=engine, model_name=MODEL_NAME)
    with pytest.raises(InvalidInputError) as info:
        await client.aembed_documents(["a", "b", "c", "word " * 2000])
    assert info.value.index == 3


def test_same_file_and_options_share_one_loaded_model(model_path: Path, private_engine: EmbeddingEngine) -> None:
    a = EmbeddingClient(model_path, engine=private_engine, query_instruction="q: ")
    b = EmbeddingClient(model_path, engine=private_engine, model_name="other-name", show_progress=False)
    assert a.ensure_loaded() == b.ensure_loaded()
    assert len(private_engine.models) == 1
    c = EmbeddingClient(model_path, engine=private_engine, normalize=False)
    assert c.ensure_loaded()[1] != a.ensure_loaded()[1]
    assert len(private_engine.models) == 2
    norm = float(np.linalg.norm(c.embed_query("hello")))
    assert abs(norm - 1.0) > 0.1  # the unnormalized model really is a different configuration


def test_default_clients_use_the_shared_engine(model_path: Path) -> None:
    a, b = EmbeddingClient(), EmbeddingClient(model_path)
    assert a.engine is b.engine is shared_engine()
    assert a.ensure_loaded() == b.ensure_loaded()
    assert a.info.dimensions == 384
    assert a.preload() == b.info


def test_shared_engine_is_recreated_after_close(model_path: Path) -> None:
    client = EmbeddingClient(model_path)
    before = client.embed_query("hello")
    old = shared_engine()
    old.close()
    assert shared_engine() is not old
    assert client.embed_query("hello") == pytest.approx(before, abs=1e-6)
    assert client.engine is shared_engine()


def test_namespace_is_stable_and_tracks_output_options(model_path: Path, engine: EmbeddingEngine) -> None:
    base = EmbeddingClient(model_path).namespace
    assert base == EmbeddingClient(model_path, show_progress=True, n_workers=2).namespace
    assert base.startswith(f"embellama.{Path(default_model_file()).stem}.")  # -bf16 or -f16, by CPU
    assert re.fullmatch(r"[A-Za-z0-9_.-]+", base)  # safe for any byte store, LocalFileStore included
    assert EmbeddingClient(model_path, query_instruction="query: ").namespace == base  # documents unaffected
    queries = EmbeddingClient(model_path).query_namespace
    assert queries != base and re.fullmatch(r"[A-Za-z0-9_.-]+", queries)
    assert EmbeddingClient(model_path, query_instruction="query: ").query_namespace != queries
    variants = {
        EmbeddingClient(model_path, normalize=False).namespace,
        EmbeddingClient(model_path, dimensions=128).namespace,
        EmbeddingClient(model_path, pooling="cls").namespace,
        EmbeddingClient(model_path, long_text_mode="truncate").namespace,
        EmbeddingClient(model_path, long_text_mode="mean").namespace,
        EmbeddingClient(model_path, document_instruction="passage: ").namespace,
        EmbeddingClient(model_path, normalization="max_abs").namespace,
        EmbeddingClient(model_path, normalization="p_norm", norm_p=3.0).namespace,
        EmbeddingClient(model_path, normalization="p_norm", norm_p=1.0).namespace,
    }
    assert base not in variants and len(variants) == 9
    assert base.count(".long-raise.") == 1 and "truncate" not in base  # the one long-text policy, once
    assert EmbeddingClient(model_path, normalization="l2").namespace == base  # the default mode, spelled out
    assert (
        EmbeddingClient(model_path, normalization="none").namespace
        == EmbeddingClient(model_path, normalize=False).namespace
    )
    registered = EmbeddingClient(engine=engine, model_name=MODEL_NAME).namespace
    assert engine.model_info(MODEL_NAME).fingerprint in registered
    assert EmbeddingClient().namespace == base  # default model resolves to the same file


def test_dimensions_option(model_path: Path) -> None:
    client = EmbeddingClient(model_path, dimensions=64)
    vector = client.embed_query("matryoshka")
    assert len(vector) == 64
    assert float(np.linalg.norm(vector)) == pytest.approx(1.0, abs=1e-4)


def test_model_path_from_env(monkeypatch: pytest.MonkeyPatch, model_path: Path, tmp_path: Path) -> None:
    monkeypatch.setenv("EMBELLAMA_MODEL_PATH", str(tmp_path / "env.gguf"))
    assert EmbeddingClient().model_path == tmp_path / "env.gguf"
    assert EmbeddingClient(model_path).model_path == model_path  # explicit wins


def test_progress_bar(engine: EmbeddingEngine, capsys: pytest.CaptureFixture[str]) -> None:
    client = EmbeddingClient(engine=engine, model_name=MODEL_NAME, show_progress=True)
    client.embed_documents([f"text {i}" for i in range(10)])
    err = capsys.readouterr().err
    assert "Embedding" in err and "10/10" in err
    asyncio.run(client.aembed_documents([f"text {i}" for i in range(5)]))
    assert "5/5" in capsys.readouterr().err


async def test_async_awaits_the_model_thread_without_an_executor(
    engine: EmbeddingEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = EmbeddingClient(engine=engine, model_name=MODEL_NAME, query_instruction="q: ")
    texts = [f"async text {i}" for i in range(12)]
    sync_docs, sync_query = client.embed_documents(texts), client.embed_query("question")
    loop = asyncio.get_running_loop()

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("run_in_executor must not be used")

    monkeypatch.setattr(loop, "run_in_executor", refuse)
    docs, query = await asyncio.gather(client.aembed_documents(texts), client.aembed_query("question"))
    assert np.allclose(docs, sync_docs, atol=1e-5)
    assert np.allclose(query, sync_query, atol=1e-5)


def test_model_config_identity_matches_the_client(model_path: Path) -> None:
    client = EmbeddingClient(model_path, pooling="mean", n_threads=1)
    assert client.config == ModelConfig(model_path=model_path, pooling="mean", n_threads=1)


def test_errors_name_the_users_model_not_the_registration_name(model_path: Path) -> None:
    """A second configuration of one file is registered as ``name#2``; its errors still name the user's model."""
    with EmbeddingEngine(cache_size=0) as engine:
        _check_users_model_name(model_path, engine)


def _check_users_model_name(model_path: Path, private_engine: EmbeddingEngine) -> None:
    first = EmbeddingClient(model_path, engine=private_engine, long_text_mode="raise")
    second = EmbeddingClient(model_path, engine=private_engine, long_text_mode="raise", normalize=False)
    assert first.ensure_loaded()[1] == model_path.stem
    assert second.ensure_loaded()[1] == f"{model_path.stem}#2"  # the engine's internal, de-duplicated name
    too_long = "word " * 2000
    for client in (first, second):
        with pytest.raises(InvalidInputError) as info:
            client.embed_query(too_long)
        assert info.value.model_name == model_path.stem and "#" not in str(info.value)
        with pytest.raises(InvalidInputError) as info:
            client.embed_documents(["fine", too_long])
        assert info.value.model_name == model_path.stem and info.value.index == 1
        with pytest.raises(InvalidInputError) as info:
            asyncio.run(client.aembed_documents([too_long]))
        assert "#" not in str(info.value)
    collecting = EmbeddingClient(
        model_path, engine=private_engine, normalize=False, long_text_mode="raise", on_error="collect"
    )
    assert collecting.embed_documents(["fine", too_long])[1] is None
    assert collecting.last_errors[1].model_name == model_path.stem
