"""from_pretrained through huggingface_hub, offline, against a locally populated hub cache."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from embellama import ConfigurationError, ModelNotFoundError
from embellama.engine.client import EmbeddingClient
from embellama.files.default_model import default_model_file
from embellama.files.hub import download_model
from embellama_integrations.langchain import EmbellamaEmbeddings
from embellama_integrations.llama_index import EmbellamaEmbedding

REPO = "embellama-test/all-MiniLM-L6-v2-GGUF"
FILE = default_model_file()  # the hub repo holds the default model under its own name (BF16 or F16 by CPU)
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def hub_cache(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A hub cache laid out as huggingface_hub writes it: blobs, a snapshot per commit, refs/main."""
    cache = tmp_path_factory.mktemp("hf-hub")
    repo = cache / ("models--" + REPO.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    (snapshot / FILE).symlink_to(model_path)  # huggingface_hub symlinks snapshots to blobs the same way
    return cache


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Offline mode for an already-imported huggingface_hub (it reads HF_HUB_OFFLINE at import)."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def test_download_model_finds_the_cached_file(hub_cache: Path, offline: None, model_path: Path) -> None:
    path = download_model(REPO, FILE, cache_dir=hub_cache)
    assert path.name == FILE and path.resolve() == model_path.resolve()
    assert download_model(REPO, FILE, cache_dir=hub_cache, revision=COMMIT) == path


def test_missing_file_offline_is_model_not_found(hub_cache: Path, offline: None) -> None:
    with pytest.raises(ModelNotFoundError, match=r"other\.gguf"):
        download_model(REPO, "other.gguf", cache_dir=hub_cache)
    with pytest.raises(ModelNotFoundError, match="not-a/repo"):
        download_model("not-a/repo", FILE, cache_dir=hub_cache, revision="v1")


def test_arguments_are_checked() -> None:
    with pytest.raises(ConfigurationError, match="repo_id"):
        download_model("", FILE)
    with pytest.raises(ConfigurationError, match="gguf"):
        download_model(REPO, "model.safetensors")


def test_core_and_adapters_from_pretrained(hub_cache: Path, offline: None, model_path: Path) -> None:
    client = EmbeddingClient.from_pretrained(REPO, FILE, cache_dir=hub_cache, query_instruction="q: ")
    reference = EmbeddingClient(model_path, query_instruction="q: ").embed_query("llamas")
    assert client.embed_query("llamas") == pytest.approx(reference, abs=1e-6)
    lc = EmbellamaEmbeddings.from_pretrained(REPO, FILE, cache_dir=hub_cache, query_instruction="q: ")
    li = EmbellamaEmbedding.from_pretrained(REPO, FILE, cache_dir=hub_cache, query_instruction="q: ")
    assert lc.embed_query("llamas") == pytest.approx(reference, abs=1e-6)
    assert li.get_query_embedding("llamas") == pytest.approx(reference, abs=1e-6)
    assert lc.model_path is not None and Path(lc.model_path).name == FILE
    assert lc.namespace == li.namespace  # same file identity through the snapshot symlink


def test_env_configured_offline_hub_in_a_fresh_process(hub_cache: Path) -> None:
    """The user's path: HF_HUB_OFFLINE=1 and HF_HUB_CACHE set before anything is imported."""
    code = textwrap.dedent(
        f"""
        from embellama_integrations.langchain import EmbellamaEmbeddings
        emb = EmbellamaEmbeddings.from_pretrained({REPO!r}, {FILE!r})
        print(len(emb.embed_query("hello")), emb.model_path)
        """
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(hub_cache))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    dims, path = proc.stdout.split()
    assert dims == "384" and path.startswith(str(hub_cache))
