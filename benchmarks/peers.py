"""The contenders. Each peer loads one model and exposes the same calls; the child process times them.

Every peer embeds the same texts with the same weights (the default model's GGUF, or the safetensors it was
converted from for sentence-transformers).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["PEERS", "ST_DIR_KINDS", "Peer", "PeerSpec", "build_peer", "cores"]

Vectors = npt.NDArray[np.float32]


def cores() -> int:
    """Usable CPU cores of this process."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


@dataclass
class Peer:
    """A loaded contender: batch and single-text calls, plus an async single-text call when it has a safe one."""

    embed_many: Callable[[list[str]], Any]
    embed_one: Callable[[str], Any]
    aembed_one: Callable[[str], Any] | None = None
    threads: str = ""
    notes: str = ""
    close: Callable[[], None] = field(default=lambda: None)


@dataclass(frozen=True)
class PeerSpec:
    """How to build a peer: ``kind`` picks the library, ``options`` its settings."""

    label: str
    kind: str
    options: dict[str, Any] = field(default_factory=dict)
    description: str = ""


def _embellama(gguf: Path, options: dict[str, Any]) -> Peer:
    from embellama import EmbeddingEngine, ModelConfig

    engine = EmbeddingEngine(cache_size=0)  # the texts are distinct anyway; no cache makes that explicit
    config = ModelConfig(
        model_path=options.get("model_path", gguf),
        model_name="bench",
        **{k: v for k, v in options.items() if k != "model_path"},
    )
    info = engine.load_model(config)
    return Peer(
        embed_many=lambda texts: engine.embed_batch("bench", texts, output="numpy"),
        embed_one=lambda text: engine.embed("bench", text, output="numpy"),
        aembed_one=lambda text: engine.aembed("bench", text, output="numpy"),
        threads=f"{info.n_workers}x{info.n_threads}",
        notes=f"flash_attn={config.flash_attn}, max_texts_per_decode={config.max_texts_per_decode}",
        close=engine.close,
    )


def _langchain_embellama(gguf: Path, options: dict[str, Any]) -> Peer:
    from embellama_integrations.langchain import EmbellamaEmbeddings

    emb = EmbellamaEmbeddings(model_path=str(gguf), preload=True, **options)
    info = emb.client.info
    return Peer(
        embed_many=emb.embed_documents,
        embed_one=emb.embed_query,
        aembed_one=emb.aembed_query,
        threads=f"{info.n_workers}x{info.n_threads}",
        notes="defaults",
    )


def _llama(gguf: Path, options: dict[str, Any]) -> Any:
    import llama_cpp

    return llama_cpp.Llama(model_path=str(gguf), embedding=True, verbose=False, **options)


def _raw_loop(gguf: Path, options: dict[str, Any]) -> Peer:
    llama = _llama(gguf, options)
    return Peer(
        embed_many=lambda texts: [llama.embed(t) for t in texts],
        embed_one=llama.embed,
        threads=f"1x{llama.context_params.n_threads_batch}",
        notes="one text per call" + (f", {options}" if options else ", constructor defaults"),
        close=llama.close,
    )


def _in_chunks(embed: Callable[[list[str]], list[Any]], batch: int) -> Callable[[list[str]], list[Any]]:
    """``embed`` applied to consecutive slices of ``batch`` texts, results concatenated."""

    def many(texts: list[str]) -> list[Any]:
        out: list[Any] = []
        for s in range(0, len(texts), batch):
            out.extend(embed(texts[s : s + batch]))
        return out

    return many


def _raw_batch(gguf: Path, options: dict[str, Any]) -> Peer:
    batch = int(options.pop("batch", 64))
    llama = _llama(gguf, options)

    return Peer(
        embed_many=_in_chunks(llama.embed, batch),
        embed_one=llama.embed,
        threads=f"1x{llama.context_params.n_threads_batch}",
        notes=f"lists of {batch}, {options}",
        close=llama.close,
    )


def _langchain_llamacpp(gguf: Path, options: dict[str, Any]) -> Peer:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from langchain_community.embeddings import LlamaCppEmbeddings

    emb = LlamaCppEmbeddings(model_path=str(gguf), verbose=False, **options)
    batch = 64

    return Peer(
        embed_many=_in_chunks(emb.embed_documents, batch),  # as a vector store feeds it: chunks of 64
        embed_one=emb.embed_query,
        threads=f"1x{emb.client.context_params.n_threads_batch}",
        notes="embed_documents in chunks of 64, defaults (its async is an executor over a non-thread-safe Llama)",
        close=emb.client.close,
    )


def _sentence_transformers(st_dir: Path, options: dict[str, Any]) -> Peer:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(st_dir), device="cpu")
    return Peer(
        embed_many=lambda texts: model.encode(texts, normalize_embeddings=True, **options),
        embed_one=lambda text: model.encode(text, normalize_embeddings=True),
        threads=f"1x{torch.get_num_threads()}",
        notes="encode(), batch_size 32, torch CPU",
    )


def _onnxruntime(st_dir: Path, options: dict[str, Any]) -> Peer:
    from .onnx_peer import build_onnx_peer

    return build_onnx_peer(st_dir, options, int8=False)


def _onnxruntime_int8(st_dir: Path, options: dict[str, Any]) -> Peer:
    from .onnx_peer import build_onnx_peer

    return build_onnx_peer(st_dir, options, int8=True)


_BUILDERS: dict[str, Callable[[Path, dict[str, Any]], Peer]] = {
    "embellama": _embellama,
    "langchain-embellama": _langchain_embellama,
    "raw-loop": _raw_loop,
    "raw-batch": _raw_batch,
    "langchain-llamacpp": _langchain_llamacpp,
    "sentence-transformers": _sentence_transformers,
    "onnxruntime": _onnxruntime,
    "onnxruntime-int8": _onnxruntime_int8,
}

ST_DIR_KINDS = frozenset({"sentence-transformers", "onnxruntime", "onnxruntime-int8"})
"""Peers that load the safetensors folder rather than the GGUF."""


def build_peer(spec: PeerSpec, gguf: Path, st_dir: Path) -> Peer:
    """Load the peer ``spec`` describes (``st_dir`` is used by sentence-transformers and ONNX Runtime, ``gguf`` by
    the rest)."""
    source = st_dir if spec.kind in ST_DIR_KINDS else gguf
    return _BUILDERS[spec.kind](source, dict(spec.options))


def run_async_pair(aembed_one: Callable[[str], Any], texts: list[str]) -> tuple[float, float]:
    """Seconds for the first half of ``texts`` awaited one after another, then the second half all at once with
    ``asyncio.gather`` (different texts, so a cache cannot help the second)."""
    import time

    half = len(texts) // 2

    async def sequential() -> None:
        for t in texts[:half]:
            await aembed_one(t)

    async def concurrent() -> None:
        await asyncio.gather(*(aembed_one(t) for t in texts[half:]))

    t0 = time.perf_counter()
    asyncio.run(sequential())
    t1 = time.perf_counter()
    asyncio.run(concurrent())
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1


PEERS: list[PeerSpec] = [
    PeerSpec("embellama", "embellama", description="embellama core `EmbeddingEngine.embed_batch`, defaults"),
    PeerSpec(
        "embellama (LangChain)", "langchain-embellama", description="`EmbellamaEmbeddings.embed_documents`, defaults"
    ),
    PeerSpec(
        "llama-cpp loop",
        "raw-loop",
        {"n_threads": 1, "n_threads_batch": 1},
        description="raw `Llama.embed`, one text per call, 1 thread (all-core threads collapse on a shared machine)",
    ),
    PeerSpec(
        "llama-cpp lists",
        "raw-batch",
        {"n_threads": 1, "n_threads_batch": 1, "flash_attn": True},
        description="raw `Llama.embed` on lists of 64, 1 thread, flash attention",
    ),
    PeerSpec(
        "llama-cpp loop (default threads)",
        "raw-loop",
        description="raw `Llama.embed`, one text per call, llama-cpp-python's default threads (all cores)",
    ),
    PeerSpec(
        "llama-cpp lists (default threads)",
        "raw-batch",
        {"flash_attn": True},
        description="raw `Llama.embed` on lists of 64, default threads, flash attention",
    ),
    PeerSpec(
        "LlamaCppEmbeddings",
        "langchain-llamacpp",
        description="`langchain_community` `LlamaCppEmbeddings.embed_documents`, defaults",
    ),
    PeerSpec("sentence-transformers", "sentence-transformers", description="`SentenceTransformer.encode`, defaults"),
    PeerSpec(
        "ONNX Runtime fp32",
        "onnxruntime",
        description="fastembed's CPU recipe: fp32 ONNX export, batches of 64 padded to the longest, all-core "
        "intra-op threads, mean pooling + L2 in numpy (benchmarks/onnx_peer.py)",
    ),
    PeerSpec(
        "ONNX Runtime int8",
        "onnxruntime-int8",
        description="the same with `quantize_dynamic` int8 weights (per channel)",
    ),
]
"""The main contenders, in the order each round runs them."""
