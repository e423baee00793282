"""Migration from the anchors: their habitual keywords fail naming the embellama equivalent (one table, the same
in the core client and both adapters), a hub id points to from_pretrained, the docs/options.md's options table is the
code's, and each anchor that runs offline here gives the vectors embellama gives (docs/migration.md)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from embellama import ConfigurationError, ModelNotFoundError
from embellama.engine.client import EmbeddingClient
from embellama.migration import HINTS, hint_for
from embellama.options_doc import BEGIN, END, options_table, replace_block
from embellama_integrations.langchain import EmbellamaEmbeddings, EmbellamaReranker
from embellama_integrations.llama_index import EmbellamaEmbedding, EmbellamaRerank

ROOT = Path(__file__).resolve().parents[2]
TEXTS = [
    "Llamas are domesticated South American camelids.",
    "The stock market fell sharply on Tuesday.",
    "How do I bake sourdough bread at home?",
    "GGUF is a file format for llama.cpp models.",
]

CONSTRUCTORS: dict[str, Any] = {
    "EmbeddingClient": EmbeddingClient,
    "EmbellamaEmbeddings": EmbellamaEmbeddings,
    "EmbellamaReranker": EmbellamaReranker,
    "EmbellamaEmbedding": EmbellamaEmbedding,
    "EmbellamaRerank": EmbellamaRerank,
}


def _takes(cls: Any, name: str) -> bool:
    fields = getattr(cls, "model_fields", {})
    return name in fields


@pytest.mark.parametrize("where", sorted(CONSTRUCTORS))
def test_every_foreign_keyword_is_refused_naming_its_replacement(where: str) -> None:
    cls = CONSTRUCTORS[where]
    checked = 0
    for name in HINTS:
        if _takes(cls, name):  # e.g. LlamaIndex's own fields
            continue
        with pytest.raises(ConfigurationError) as info:
            cls(**{name: 1})
        message = str(info.value)
        assert f"{where} does not take {name!r}" in message and HINTS[name] in message, message
        assert "Extra inputs are not permitted" not in message
        checked += 1
    assert checked >= len(HINTS) - 2


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"max_length": 256}, r"'max_length': max_tokens="),
        ({"n_ctx": 512}, r"'n_ctx': max_tokens= .*batch_tokens="),
        ({"n_batch": 512}, r"'n_batch': batch_tokens="),
        ({"device": "cuda"}, r"'device': n_gpu_layers="),
        ({"cache_folder": "/tmp/x"}, r"'cache_folder': the EMBELLAMA_CACHE"),
        ({"encode_kwargs": {"normalize_embeddings": False}}, r"normalize_embeddings → normalize=False"),
        ({"encode_kwargs": {"batch_size": 32}}, r"batch_size → drop it: .*batch_tokens="),
        ({"model_kwargs": {"device": "cpu", "trust_remote_code": True}}, r"device → n_gpu_layers=.*trust_remote"),
        ({"model": "nomic-embed-text"}, r"'model': model_path=.*from_pretrained"),
        ({"multi_process": True}, r"'multi_process': n_workers="),
        ({"batch_size": 64}, r"'batch_size': drop it: .*batch_tokens="),
        ({"truncate": True}, r"'truncate': use long_text_mode='truncate' \(truncate=True\)"),
        ({"truncate": False}, r"'truncate': .*long_text_mode='raise' \(truncate=False\)"),
        ({"normalise": True}, r"'normalise': did you mean normalize=\?"),
        ({"colour": 1}, r"'colour': not an embellama option"),
    ],
)
def test_the_issue_keywords_name_the_embellama_option(options: dict[str, Any], expected: str) -> None:
    for cls in (EmbeddingClient, EmbellamaEmbeddings, EmbellamaEmbedding):
        with pytest.raises(ConfigurationError, match=expected):
            cls(**options)


def test_several_unknown_keywords_are_named_together() -> None:
    with pytest.raises(ConfigurationError) as info:
        EmbellamaEmbeddings(model_kwargs={"device": "cpu"}, encode_kwargs={"normalize_embeddings": True})
    message = str(info.value)
    assert "'encode_kwargs', 'model_kwargs'" in message and "normalize=True" in message
    assert "n_gpu_layers" in message and "docs/migration.md" in message


@pytest.mark.parametrize("repo", ["sentence-transformers/all-MiniLM-L6-v2", "BAAI/bge-small-en-v1.5"])
def test_a_hub_id_points_to_from_pretrained(repo: str) -> None:
    for make in (
        lambda: EmbeddingClient(model_name=repo),
        lambda: EmbeddingClient(repo),
        lambda: EmbellamaEmbeddings(model_name=repo),
        lambda: EmbellamaEmbedding(model_name=repo),
    ):
        with pytest.raises(ModelNotFoundError, match=r"hub repository id.*from_pretrained\('org/model-GGUF'") as info:
            make()
        assert ("default model" in str(info.value)) == repo.endswith("all-MiniLM-L6-v2")


def test_a_local_folder_or_file_named_like_a_hub_id_is_not_one(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "org").mkdir()
    (tmp_path / "org" / "model").write_bytes(b"")
    client = EmbeddingClient(model_name="org/model")  # an existing file: the Hugging Face path habit
    assert client.model_path == Path("org/model")


def test_nested_kwargs_without_equivalent_say_so() -> None:
    assert hint_for("model_kwargs", {"attn_implementation": "sdpa"}) == "attn_implementation: no embellama equivalent"


def test_readme_options_table_is_generated_from_model_config() -> None:
    readme = (ROOT / "docs" / "options.md").read_text()
    assert BEGIN in readme and END in readme
    assert replace_block(readme, options_table()) == readme, (
        "docs/options.md differs from ModelConfig: run `python -m embellama.options_doc --write docs/options.md`"
    )


def test_options_table_states_the_code_defaults() -> None:
    rows = {line.split("|")[1].strip(" `"): line.split("|")[2].strip() for line in options_table().splitlines()[2:]}
    assert rows["normalize"] == "`True`" and rows["request_timeout"] == "`300.0`" and rows["isolation"] == '`"thread"`'
    assert rows["prompts"].startswith("the model family's")  # not "" (the README once said so)
    assert rows["n_workers"].startswith("one per usable core")
    assert rows["long_text_mode"] == '`"raise"`' and "truncate" not in rows  # one long-text option


def test_readme_adapter_table_states_the_family_prompt_default() -> None:
    readme = (ROOT / "docs" / "options.md").read_text()
    row = next(line for line in readme.splitlines() if line.startswith("| query prefix |"))
    assert "family" in row and '| `""` |' not in row


def test_migration_page_covers_every_anchor_and_the_issue_keywords() -> None:
    page = (ROOT / "docs" / "migration.md").read_text()
    anchors = (
        "LlamaCppEmbeddings",
        "HuggingFaceEmbeddings",
        "FastEmbedEmbeddings",
        "HuggingFaceEmbedding",
        "OllamaEmbeddings",
    )
    for anchor in anchors:
        assert f"## From {anchor}" in page or f"`{anchor}`" in page, anchor
    for keyword in ("model_kwargs", "encode_kwargs", "n_ctx", "n_batch", "device", "max_length", "cache_folder"):
        assert f"`{keyword}" in page, keyword
    for keyword in ("model", "multi_process", "batch_size", "from_pretrained"):
        assert keyword in page


# ---------------------------------------------------------------------------------------------- vectors match
def _cosines(a: Any, b: Any) -> np.ndarray:
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return (x * y).sum(1) / np.linalg.norm(x, axis=1) / np.linalg.norm(y, axis=1)


def test_from_huggingface_embeddings(model_path: Path, st_dir: Path) -> None:
    langchain_huggingface = pytest.importorskip("langchain_huggingface")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    before = langchain_huggingface.HuggingFaceEmbeddings(
        model_name=str(st_dir), model_kwargs={"device": "cpu"}, encode_kwargs={"normalize_embeddings": True}
    )
    after = EmbellamaEmbeddings()  # the same model: embellama's default, built from these weights
    assert after.client.model_path == model_path
    assert _cosines(before.embed_documents(TEXTS), after.embed_documents(TEXTS)).min() >= 0.999
    assert _cosines([before.embed_query(TEXTS[0])], [after.embed_query(TEXTS[0])]).min() >= 0.999
    assert np.linalg.norm(after.embed_query(TEXTS[1])) == pytest.approx(1.0, abs=1e-4)  # normalized, as asked


def test_from_llama_index_huggingface_embedding(model_path: Path, st_dir: Path) -> None:
    hf = pytest.importorskip("llama_index.embeddings.huggingface")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    before = hf.HuggingFaceEmbedding(model_name=str(st_dir), device="cpu", max_length=256)
    after = EmbellamaEmbedding(max_tokens=256)
    assert _cosines(before.get_text_embedding_batch(TEXTS), after.get_text_embedding_batch(TEXTS)).min() >= 0.999
    assert _cosines([before.get_query_embedding(TEXTS[2])], [after.get_query_embedding(TEXTS[2])]).min() >= 0.999


def test_from_llamacpp_embeddings(model_path: Path) -> None:
    pytest.importorskip("langchain_community")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from langchain_community.embeddings import LlamaCppEmbeddings

    before = LlamaCppEmbeddings(model_path=str(model_path), n_ctx=512, n_batch=512, n_threads=1, verbose=False)
    try:
        old = [before.embed_query(t) for t in TEXTS]  # one text per call: a Llama context holds one sequence
    finally:
        before.client.close()
    after = EmbellamaEmbeddings(model_path=str(model_path), n_threads=1)
    assert _cosines(old, after.embed_documents(TEXTS)).min() >= 0.9999
    raw = EmbellamaEmbeddings(model_path=str(model_path), normalize=False).embed_documents(TEXTS)
    assert np.allclose(np.linalg.norm(raw, axis=1), np.linalg.norm(old, axis=1), rtol=1e-3)  # LlamaCpp's scale


def test_from_fastembed_keywords() -> None:
    """FastEmbed downloads its ONNX files at construction (not offline here): the keyword mapping only."""
    with pytest.raises(ConfigurationError) as info:
        EmbellamaEmbeddings(threads=2, parallel=2, doc_embed_type="passage", batch_size=256, cache_dir="/tmp")
    message = str(info.value)
    for replacement in ("n_threads=", "n_workers=", "long_text_mode=", "batch_tokens=", "EMBELLAMA_CACHE"):
        assert replacement in message


def test_from_ollama_keywords() -> None:
    """OllamaEmbeddings needs an Ollama server (none here): the keyword mapping only."""
    with pytest.raises(ConfigurationError) as info:
        EmbellamaEmbeddings(model="all-minilm", base_url="http://localhost:11434", num_ctx=512, num_thread=2)
    message = str(info.value)
    for replacement in ("model_path=", "embellama serve", "max_tokens=", "n_threads="):
        assert replacement in message
