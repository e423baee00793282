"""Model families through embellama, against transformers' forward pass on the same weights.

Six tiny architectures with random weights (built offline, ``tests/fixtures/families.py``) and the real gemma-3-270m
Q4_K_M: default options load (the family presets and the memory rule), vectors match transformers per text,
decoders feed long texts over several decodes without contamination, presets apply their prompts and EOS rule,
and ``long_text_mode="mean"`` averages chunks.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from embellama import ConfigurationError, EmbeddingEngine, ModelConfig, ModelLoadError
from embellama.engine.client import EmbeddingClient
from embellama.files.gguf import read_header
from embellama.model.families import detect_family
from embellama.model.sizing import DecodeShape, MemoryEstimate, check_memory
from tests.fixtures.families import FAMILY_NAMES, FamilyFixture, build_family, cosine, gemma_270m

TEXTS = [
    "hello world",
    "The quick brown fox jumps over the lazy dog.",
    "What is the capital of France?",
    "Numbers: 3.14159, 2.71828 and 42!",
    "email@example.com https://example.org/path?q=1",
    "UPPER CASE and MiXeD case words",
]
LONG = " ".join(f"word{i % 37} and more text" for i in range(50))  # ~430 tokens: over 10 ubatches of 32


@pytest.fixture(scope="session")
def families() -> dict[str, FamilyFixture]:
    return {name: build_family(name) for name in FAMILY_NAMES}


@pytest.fixture(scope="module")
def engine() -> Iterator[EmbeddingEngine]:
    with EmbeddingEngine(cache_size=0) as eng:
        yield eng


def _unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=-1, keepdims=True)


def _load(engine: EmbeddingEngine, fixture: FamilyFixture, name: str, **options: object) -> str:
    engine.load_model(ModelConfig(model_path=fixture.gguf_path, model_name=name, n_workers=1, **options))  # type: ignore[arg-type]
    return name


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_every_pooling_matches_transformers(
    engine: EmbeddingEngine, families: dict[str, FamilyFixture], family: str
) -> None:
    fixture = families[family]
    for pooling in ("mean", "cls", "last"):
        name = _load(engine, fixture, f"{family}-{pooling}", pooling=pooling)
        try:
            got = engine.embed_batch(name, [*TEXTS, LONG[:600]], output="numpy")
            want = _unit(fixture.reference([*TEXTS, LONG[:600]], pooling))
            worst = min(cosine(g, w) for g, w in zip(got, want, strict=True))
            assert worst >= 0.999, f"{family} {pooling}: worst cosine {worst:.6f}"
        finally:
            engine.unload_model(name)


@pytest.mark.parametrize(
    ("family", "expected"),
    [
        ("qwen3", "decoder"),
        ("gemma-embedding", "embeddinggemma"),
        ("nomic-bert", "nomic-embed"),
        ("modernbert", "modernbert"),
    ],
)
def test_default_options_follow_the_family(
    engine: EmbeddingEngine, families: dict[str, FamilyFixture], family: str, expected: str
) -> None:
    fixture = families[family]
    info = engine.load_model(ModelConfig(model_path=fixture.gguf_path, model_name=f"{family}-default", n_workers=1))
    try:
        assert info.family == expected and info.causal is fixture.causal
        pooling = {"decoder": "last"}.get(expected, "mean")
        assert info.pooling == pooling
        got = engine.embed_batch(info.name, TEXTS, output="numpy")
        want = _unit(fixture.reference(TEXTS, pooling))
        assert min(cosine(g, w) for g, w in zip(got, want, strict=True)) >= 0.999
    finally:
        engine.unload_model(info.name)


def test_encoders_without_a_pooling_type_ask_for_one(
    engine: EmbeddingEngine, families: dict[str, FamilyFixture]
) -> None:
    for family in ("bert", "xlm-roberta"):
        with pytest.raises(ConfigurationError, match="records no pooling type"):
            engine.load_model(ModelConfig(model_path=families[family].gguf_path, model_name=f"{family}-none"))


def test_decoder_long_texts_span_several_decodes(engine: EmbeddingEngine, families: dict[str, FamilyFixture]) -> None:
    """A decoder with 32-token ubatches embeds a ~400-token text in many decodes, equal to transformers."""
    fixture = families["qwen3"]
    info = engine.load_model(
        ModelConfig(model_path=fixture.gguf_path, model_name="qwen3-stream", n_workers=1, batch_tokens=32)
    )
    try:
        long_texts = [LONG, LONG[:700], "short one"]
        assert len(fixture.token_ids(LONG)) > 10 * 32
        for pooling_name in ("last",):
            got = engine.embed_batch(info.name, long_texts, output="numpy")
            want = _unit(fixture.reference(long_texts, pooling_name))
            assert min(cosine(g, w) for g, w in zip(got, want, strict=True)) >= 0.999
    finally:
        engine.unload_model(info.name)


def test_decoder_has_no_contamination_across_decodes(families: dict[str, FamilyFixture]) -> None:
    """A text's vector is the same alone, in a batch, and after a long unrelated text on the same worker."""
    fixture = families["qwen3"]
    with EmbeddingEngine(cache_size=0) as eng:
        eng.load_model(ModelConfig(model_path=fixture.gguf_path, model_name="q", n_workers=1, batch_tokens=64))
        alone = eng.embed("q", TEXTS[1], output="numpy")
        batch = eng.embed_batch("q", [TEXTS[0], TEXTS[1], LONG, TEXTS[2]], output="numpy")
        eng.embed("q", LONG)
        after = eng.embed("q", TEXTS[1], output="numpy")
    assert cosine(alone, batch[1]) >= 0.9999 and cosine(alone, after) >= 0.9999


def _renamed(fixture: FamilyFixture, tmp: Path, name: str, *remove: str) -> Path:
    """A copy of a fixture GGUF with another ``general.name`` (and some keys removed), via gguf-new-metadata."""
    out = tmp / f"{name}.gguf"
    cmd = [sys.executable, "-m", "gguf.scripts.gguf_new_metadata", "--general-name", name, "--force"]
    for key in remove:
        cmd += ["--remove-metadata", key]
    subprocess.run([*cmd, str(fixture.gguf_path), str(out)], check=True, capture_output=True, timeout=120)
    return out


def test_qwen3_embedding_preset_appends_eos_and_uses_its_prompts(
    families: dict[str, FamilyFixture], tmp_path: Path
) -> None:
    """An older Qwen3-Embedding GGUF that does not set add_eos_token: the preset appends EOS (last-token pooling
    over it), and queries get the instruction prompt, documents none — equal to transformers on those tokens."""
    fixture = families["qwen3"]
    path = _renamed(fixture, tmp_path, "Qwen3-Embedding-Tiny", "tokenizer.ggml.add_eos_token")
    family = detect_family(read_header(path).metadata)
    assert family.name == "qwen3-embedding"
    with EmbeddingEngine(cache_size=0) as eng:
        info = eng.load_model(ModelConfig(model_path=path, model_name="qe", n_workers=1))
        assert info.family == "qwen3-embedding" and info.pooling == "last" and info.add_eos
        got = eng.embed_batch("qe", TEXTS, output="numpy")
        want = _unit(fixture.reference(TEXTS, "last"))  # the fixture's tokenizer appends <|endoftext|>
        assert min(cosine(g, w) for g, w in zip(got, want, strict=True)) >= 0.999
        without = EmbeddingEngine(cache_size=0)
        try:
            without.load_model(ModelConfig(model_path=path, model_name="no-eos", n_workers=1, add_eos=False))
            assert cosine(without.embed("no-eos", TEXTS[1], output="numpy"), got[1]) < 0.999  # EOS matters
        finally:
            without.close()
        client = EmbeddingClient(engine=eng, model_name="qe")
        query = np.asarray(client.embed_query(TEXTS[2]))
        prompt = family.prompts["query"]
        assert prompt.startswith("Instruct:")
        assert cosine(query, _unit(fixture.reference([prompt + TEXTS[2]], "last"))[0]) >= 0.999
        doc = np.asarray(client.embed_documents([TEXTS[2]])[0])
        assert cosine(doc, got[2]) >= 0.9999  # documents take no prompt
        assert EmbeddingClient(engine=eng, model_name="qe", query_instruction="").embed_query(TEXTS[2]) is not None


def test_embeddinggemma_preset_prompts(families: dict[str, FamilyFixture]) -> None:
    fixture = families["gemma-embedding"]
    with EmbeddingEngine(cache_size=0) as eng:
        info = eng.load_model(ModelConfig(model_path=fixture.gguf_path, model_name="eg", n_workers=1))
        assert info.prompts["query"] == "task: search result | query: "
        client = EmbeddingClient(engine=eng, model_name="eg")
        q = np.asarray(client.embed_query(TEXTS[0]))
        d = np.asarray(client.embed_documents([TEXTS[0]])[0])
        want = _unit(fixture.reference([info.prompts["query"] + TEXTS[0], info.prompts["document"] + TEXTS[0]], "mean"))
        assert cosine(q, want[0]) >= 0.999 and cosine(d, want[1]) >= 0.999
        named = eng.embed("eg", TEXTS[0], prompt_name="query", output="numpy")
        assert cosine(named, q) >= 0.9999
        with pytest.raises(ConfigurationError, match="no prompt named"):
            eng.embed("eg", TEXTS[0], prompt_name="classification")


def test_matryoshka_sizes_outside_the_family_warn(
    families: dict[str, FamilyFixture], caplog: pytest.LogCaptureFixture
) -> None:
    fixture = families["nomic-bert"]
    with EmbeddingEngine(cache_size=0) as eng:
        eng.load_model(ModelConfig(model_path=fixture.gguf_path, model_name="m64", n_workers=1, dimensions=64))
        assert not [r for r in caplog.records if "Matryoshka" in r.getMessage()]
        eng.load_model(ModelConfig(model_path=fixture.gguf_path, model_name="m48", n_workers=1, dimensions=48))
        assert [r for r in caplog.records if "Matryoshka" in r.getMessage() and "48" in r.getMessage()]
        assert len(eng.embed("m48", "x")) == 48


def test_long_text_mode_mean_averages_token_chunks(engine: EmbeddingEngine, model_path: Path) -> None:
    """On the default model (limit 256): an over-long text is the length-weighted mean of its chunks' vectors,
    each chunk keeping [CLS] ... [SEP]."""
    from embellama.model.embedding import EmbeddingModel

    text = " ".join(f"token{i}" for i in range(400))
    config = ModelConfig(model_path=model_path, model_name="mean-mode", long_text_mode="mean", normalize=False)
    with EmbeddingModel(config) as model:
        prepared = model.prepare_input(text)
        assert prepared.chunks is not None and len(prepared.chunks) >= 2
        assert all(
            len(c) <= 256 and c[0] == prepared.chunks[0][0] and c[-1] == prepared.chunks[0][-1] for c in prepared.chunks
        )
        rows = model.embed_tokens(list(prepared.chunks))
        expected = np.average(rows, axis=0, weights=[len(c) for c in prepared.chunks])
        direct = model.embed([text])[0]
    np.testing.assert_allclose(direct, expected, rtol=1e-5, atol=1e-6)
    engine.load_model(config)
    try:
        served = engine.embed_batch("mean-mode", ["short", text], output="numpy")
        np.testing.assert_allclose(served[1], expected, rtol=1e-3, atol=1e-4)
    finally:
        engine.unload_model("mean-mode")
    with pytest.raises(ConfigurationError, match="long_text_mode"):
        ModelConfig(model_path=model_path, long_text_mode="median")  # type: ignore[arg-type]


def test_memory_check_names_the_need_and_the_options() -> None:
    shape = DecodeShape(causal=False, n_ubatch=8192, n_ctx=8192, n_seq=8)
    with pytest.raises(ModelLoadError, match=r"about \d+ MB .* lower max_tokens"):
        check_memory("big", MemoryEstimate(3 << 30, 0), n_workers=4, limit=8192, available=8 << 30)
    check_memory("fits", MemoryEstimate(100 << 20, 0), n_workers=2, limit=shape.n_ctx, available=8 << 30)


@pytest.fixture(scope="module")
def gemma() -> FamilyFixture:
    return gemma_270m()


def test_gemma_loads_with_default_options_and_matches_transformers(gemma: FamilyFixture) -> None:
    """The real decoder GGUF: default options load with a few hundred MB per context (it asked for 37 GB before),
    last and mean pooling match transformers >= 0.995 per text, batch == single >= 0.995."""
    with EmbeddingEngine(cache_size=0) as eng:
        info = eng.load_model(ModelConfig(model_path=gemma.gguf_path, model_name="gemma"))
        assert info.family == "decoder" and info.causal and info.pooling == "last" and info.max_tokens == 8192
        assert 0 < info.context_mib < 600
        batch = eng.embed_batch("gemma", TEXTS, output="numpy")
        single = np.stack([eng.embed("gemma", t, output="numpy") for t in TEXTS])
        assert min(cosine(b, s) for b, s in zip(batch, single, strict=True)) >= 0.995
        want = _unit(gemma.reference(TEXTS, "last"))
        assert min(cosine(g, w) for g, w in zip(batch, want, strict=True)) >= 0.995
        eng.load_model(ModelConfig(model_path=gemma.gguf_path, model_name="gemma-mean", pooling="mean", n_workers=1))
        mean = eng.embed_batch("gemma-mean", TEXTS, output="numpy")
        want_mean = _unit(gemma.reference(TEXTS, "mean"))
        assert min(cosine(g, w) for g, w in zip(mean, want_mean, strict=True)) >= 0.995


def test_a_load_that_cannot_fit_is_refused_before_allocating(model_path: Path) -> None:
    """65,536-token decodes without flash attention would need hundreds of GB of attention scores: refused with
    the needed MB and the options to change, before llama.cpp allocates anything (no crash, no OOM)."""
    with EmbeddingEngine() as eng, pytest.raises(ModelLoadError, match=r"would need about \d+ MB.*lower max_tokens"):
        eng.load_model(ModelConfig(model_path=model_path, model_name="huge", batch_tokens=65536, flash_attn=False))
