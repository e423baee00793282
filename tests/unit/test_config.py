"""ModelConfig / EngineConfig validation: every bad value and every process-aborting combination is refused."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from embellama import ConfigurationError, EngineConfig, ModelConfig, Pooling
from embellama.config import default_thread_count, default_worker_count, option_docs

LONG_TEXT_MODES = ("raise", "truncate", "mean")


def test_defaults_and_derived_name() -> None:
    cfg = ModelConfig(model_path="~/models/My-Model.GGUF")
    assert cfg.name == "My-Model"
    assert isinstance(cfg.model_path, Path) and "~" not in str(cfg.model_path)
    assert cfg.pooling is Pooling.MODEL and cfg.normalize and cfg.long_text_mode == "raise"
    assert cfg.n_workers == default_worker_count() >= 1
    assert cfg.threads == default_thread_count(cfg.n_workers) >= 1


@pytest.mark.parametrize("value", ["mean", "MEAN", Pooling.MEAN])
def test_pooling_accepts_strings_and_enum(value: Any) -> None:
    assert ModelConfig(model_path="m.gguf", pooling=value).pooling is Pooling.MEAN


def test_unknown_pooling_lists_valid_values() -> None:
    with pytest.raises(ConfigurationError, match="'mean_sqrt_len'") as info:
        ModelConfig(model_path="m.gguf", pooling="median")
    assert "median" in str(info.value)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"model_path": ""}, "model_path"),
        ({"model_path": 3}, "model_path"),
        ({"model_name": ""}, "model_name"),
        ({"dimensions": 0}, "dimensions"),
        ({"dimensions": 2.5}, "dimensions"),
        ({"max_tokens": -1}, "max_tokens"),
        ({"batch_tokens": 0}, "batch_tokens"),
        ({"batch_tokens": 1 << 20}, "batch_tokens"),
        ({"max_texts_per_decode": 0}, "max_texts_per_decode"),
        ({"max_texts_per_decode": 257}, "max_texts_per_decode"),
        ({"n_threads": 0}, "n_threads"),
        ({"n_workers": 0}, "n_workers"),
        ({"n_workers": True}, "n_workers"),
        ({"n_gpu_layers": -2}, "n_gpu_layers"),
        ({"isolation": "container"}, "isolation"),
        ({"crash_retries": -1}, "crash_retries"),
        ({"long_text_mode": "median"}, "long_text_mode"),
        ({"long_text_mode": None}, "long_text_mode"),
        ({"normalize": "yes"}, "normalize"),
        ({"normalization": "l1"}, "normalization must be one of 'l2', 'max_abs', 'p_norm', 'none', got 'l1'"),
        ({"normalization": "p_norm", "norm_p": 0.0}, "norm_p"),
        ({"normalization": "p_norm", "norm_p": -2}, "norm_p"),
        ({"normalization": "p_norm", "norm_p": float("inf")}, "norm_p"),
        ({"normalization": "p_norm", "norm_p": float("nan")}, "norm_p"),
        ({"normalization": "p_norm", "norm_p": "3"}, "norm_p"),
        ({"normalization": "p_norm", "norm_p": True}, "norm_p"),
        ({"normalize": False, "normalization": "max_abs"}, "normalization='max_abs' contradicts normalize=False"),
        ({"normalize": False, "normalization": "p_norm"}, "normalization='p_norm' contradicts normalize=False"),
        # llama.cpp aborts (GGML_ASSERT) when n_ubatch < n_seq_max with pooling
        ({"batch_tokens": 4, "max_texts_per_decode": 8}, "n_ubatch < n_seq_max"),
    ],
)
def test_invalid_values_raise_configuration_error(changes: dict[str, Any], message: str) -> None:
    options: dict[str, Any] = {"model_path": "m.gguf", **changes}
    with pytest.raises(ConfigurationError, match=message):
        ModelConfig(**options)


def test_normalization_options() -> None:
    cfg = ModelConfig(model_path="m.gguf")
    assert (cfg.normalize, cfg.normalization, cfg.norm_p) == (True, "l2", 2.0)
    assert ModelConfig(model_path="m.gguf", normalization="p_norm", norm_p=3).norm_p == 3.0  # stored as a float
    for mode in ("l2", "none"):  # consistent with no normalization
        assert not ModelConfig(model_path="m.gguf", normalize=False, normalization=mode).normalize


def test_configuration_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        ModelConfig(model_path="m.gguf", n_workers=0)


def test_replace_validates_again() -> None:
    cfg = ModelConfig(model_path="m.gguf")
    assert cfg.replace(model_name="x").name == "x"
    with pytest.raises(ConfigurationError):
        cfg.replace(n_threads=0)


def test_config_is_immutable_and_hashable() -> None:
    cfg = ModelConfig(model_path="m.gguf")
    with pytest.raises(AttributeError):
        cfg.normalize = False  # type: ignore[misc]
    assert hash(cfg) == hash(ModelConfig(model_path="m.gguf"))


def test_thread_default_splits_cores_between_workers() -> None:
    assert default_thread_count(64) == 1
    assert default_thread_count(1) >= default_thread_count(2)


@pytest.mark.parametrize("changes", [{"cache_size": -1}, {"cache_size": 1.5}, {"chunk_size": 0}])
def test_engine_config_validation(changes: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        EngineConfig(**changes)


def test_gpu_offload_defaults_to_one_worker() -> None:
    """With layers on a GPU one context with large decodes suits the device; an explicit n_workers still wins."""
    assert ModelConfig(model_path="m.gguf", n_gpu_layers=-1).n_workers == 1
    assert ModelConfig(model_path="m.gguf", n_gpu_layers=8, n_workers=3).n_workers == 3
    assert ModelConfig(model_path="m.gguf").n_workers == default_worker_count()


def test_decode_shape_defaults_follow_the_device() -> None:
    cpu = ModelConfig(model_path="m.gguf")
    assert (cpu.batch_tokens, cpu.max_texts_per_decode) == (256, 8)
    gpu = ModelConfig(model_path="m.gguf", n_gpu_layers=-1)
    assert (gpu.n_workers, gpu.batch_tokens, gpu.max_texts_per_decode) == (1, 2048, 64)
    mine = ModelConfig(model_path="m.gguf", n_gpu_layers=-1, batch_tokens=512, max_texts_per_decode=16)
    assert (mine.batch_tokens, mine.max_texts_per_decode) == (512, 16)  # the user's choice wins
    assert ModelConfig(model_path="m.gguf", n_gpu_layers=-1, batch_tokens=32).max_texts_per_decode == 32
    assert ModelConfig(model_path="m.gguf", batch_tokens=4).max_texts_per_decode == 4  # bounded by the budget


def test_removed_and_foreign_options_are_configuration_errors_naming_the_replacement() -> None:
    """``truncate`` was replaced by ``long_text_mode`` before 0.1.0: passing it fails through the hints table, as
    other libraries' keywords do (not a TypeError), also through ``replace`` and the engine's keyword form."""
    with pytest.raises(ConfigurationError, match=r"ModelConfig does not take 'truncate'.*long_text_mode='truncate'"):
        ModelConfig(model_path="m.gguf", truncate=True)
    with pytest.raises(ConfigurationError, match=r"'batch_size': drop it"):
        ModelConfig(model_path="m.gguf", batch_size=32)
    with pytest.raises(ConfigurationError, match="did you mean normalize="):
        ModelConfig(model_path="m.gguf").replace(normalise=False)
    with pytest.raises(ConfigurationError, match="long_text_mode='raise'"):
        ModelConfig(model_path="m.gguf").replace(truncate=False)


def test_the_cache_key_holds_the_long_text_policy_once() -> None:
    keys = {mode: ModelConfig(model_path="m.gguf", long_text_mode=mode).output_options() for mode in LONG_TEXT_MODES}
    assert keys["raise"] == ModelConfig(model_path="m.gguf").output_options()  # the core's default
    for mode, key in keys.items():
        assert [part for part in key if part in LONG_TEXT_MODES] == [mode]
        assert sum(isinstance(part, bool) for part in key) == 1  # normalize; no truncate flag beside the policy
    assert len({len(key) for key in keys.values()}) == 1 and len(set(keys.values())) == 3


def test_option_docs_are_declared_with_the_fields() -> None:
    """Every option of both configs documents itself in ``metadata["doc"]`` (no source parsing), on one line."""
    for config in (ModelConfig, EngineConfig):
        docs = option_docs(config)
        assert list(docs) == [f.name for f in dataclasses.fields(config)]
        for f in dataclasses.fields(config):
            assert docs[f.name] == " ".join(f.metadata["doc"].split()) and len(docs[f.name]) > 10
    assert option_docs()["long_text_mode"].startswith("What happens to a text over the input limit")
    assert "Defaults to 64" in option_docs(EngineConfig)["chunk_size"]

    @dataclasses.dataclass
    class Undocumented:
        documented: int = dataclasses.field(default=0, metadata={"doc": "Says what it does."})
        forgotten: int = 0
        """An attribute docstring is not read (there is no source parsing)."""

    with pytest.raises(TypeError, match=r"Undocumented.forgotten declares no field\(metadata="):
        option_docs(Undocumented)  # type: ignore[arg-type]
