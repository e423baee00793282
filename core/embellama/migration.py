"""Keywords of other embedding libraries and what to use in embellama instead: one table, used by the core client
and both framework adapters, so a habitual ``device="cpu"`` or ``max_length=256`` fails naming its replacement (and so
does an embellama option replaced before 0.1.0, ``truncate=``).

:data:`HINTS` maps a keyword of HuggingFaceEmbeddings, FastEmbedEmbeddings, LlamaCppEmbeddings, OllamaEmbeddings or
llama-index's HuggingFaceEmbedding to the embellama way of doing the same. :func:`unknown_options_error` builds
the :class:`~embellama.errors.ConfigurationError` for a set of unknown keywords (looking inside ``model_kwargs``
and ``encode_kwargs`` too); :func:`hub_id_hint` explains a hub repository id given where a GGUF file is expected.
See ``docs/migration.md``.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from embellama.errors import ConfigurationError

__all__ = ["HINTS", "hint_for", "hub_id_hint", "looks_like_hub_id", "unknown_options_error"]

_NO_DECODE_SIZE = (
    "drop it: embellama plans every decode itself (batch_tokens= sets the token budget of one decode, "
    "max_texts_per_decode= how many texts it packs)"
)
_MODEL = (
    "model_path='/path/model.gguf' (a GGUF file), or .from_pretrained(repo_id, filename) for a GGUF on the "
    "Hugging Face hub; leave it out for the default all-MiniLM-L6-v2"
)
_DEVICE = "n_gpu_layers= (0: CPU, the default; -1: every layer on the GPU, with a GPU build of llama.cpp)"
_CACHE = "the EMBELLAMA_CACHE environment variable (where the default model is built; hub files use HF_HUB_CACHE)"
_WORKERS = "n_workers= (model instances, one thread each); isolation='process' runs each in a child process"
_NOT_SAMPLING = "drop it: an embedding model does not sample"

HINTS: dict[str, str] = {
    # sentence-transformers: HuggingFaceEmbeddings (LangChain), HuggingFaceEmbedding (LlamaIndex)
    "model_kwargs": "pass each option as a keyword of its own (device → n_gpu_layers=, trust_remote_code: not needed)",
    "encode_kwargs": "pass each option as a keyword of its own (normalize_embeddings → normalize=, batch_size: drop)",
    "query_encode_kwargs": "query_instruction= for a query prefix; other encode options are keywords of their own",
    "normalize_embeddings": "normalize= (True by default)",
    "convert_to_numpy": "drop it: adapters return lists of floats, EmbeddingEngine.embed_batch_array a numpy array",
    "convert_to_tensor": "drop it: embellama returns lists of floats (EmbeddingEngine.embed_batch_array: numpy)",
    "show_progress_bar": "show_progress=",
    "prompt": "query_instruction= / document_instruction= (LlamaIndex: text_instruction=)",
    "prompt_name": "query_instruction= / document_instruction=; the model family's prompts are used by default",
    "precision": "pick a quantized GGUF file (q8_0, q4_k_m ...) as model_path",
    "device": _DEVICE,
    "max_length": "max_tokens= (the input limit in tokens; adapters cut over-long texts: long_text_mode='truncate')",
    "max_seq_length": "max_tokens=",
    "cache_folder": _CACHE,
    "cache_dir": _CACHE,
    "multi_process": _WORKERS,
    "parallel_process": _WORKERS,
    "target_devices": _WORKERS,
    "trust_remote_code": "drop it: a GGUF file carries no code",
    "backend": "drop it: embellama always runs llama.cpp",
    "tokenizer_name": "drop it: the tokenizer is inside the GGUF file",
    "tokenizer_kwargs": "drop it: the tokenizer is inside the GGUF file",
    "config_kwargs": "drop it: the model's configuration is inside the GGUF file",
    "revision": ".from_pretrained(repo_id, filename, revision=...)",
    "embed_instruction": "document_instruction= (LlamaIndex: text_instruction=)",
    "batch_size": _NO_DECODE_SIZE,
    # FastEmbedEmbeddings
    "model": _MODEL,
    "model_id": _MODEL,
    "threads": "n_threads= (threads per model instance; the default splits the usable cores)",
    "parallel": _WORKERS,
    "doc_embed_type": "drop it: documents are embedded one vector per text (long texts: long_text_mode='mean')",
    "providers": _DEVICE,
    "lazy_load": "drop it: the model loads on first use unless preload=True",
    "specific_model_path": "model_path=",
    # LlamaCppEmbeddings / llama-cpp-python
    "n_ctx": "max_tokens= (input limit) and batch_tokens= (decode budget); embellama sizes the context itself",
    "n_batch": "batch_tokens=",
    "n_ubatch": "batch_tokens=",
    "n_seq_max": "max_texts_per_decode=",
    "n_parts": "drop it: llama.cpp no longer splits models",
    "f16_kv": "drop it: the KV cache type is chosen by llama.cpp",
    "use_mlock": "drop it: the model is memory-mapped (use_mmap=)",
    "vocab_only": "drop it",
    "seed": _NOT_SAMPLING,
    "logits_all": "drop it",
    "embedding": "drop it: embellama always loads models for embedding",
    "device_map": _DEVICE,
    # OllamaEmbeddings
    "base_url": "drop it: embellama runs in your process; `embellama serve` is the server if you want one",
    "keep_alive": "drop it: a model stays loaded while a client uses it",
    "num_ctx": "max_tokens= (input limit) and batch_tokens= (decode budget)",
    "num_thread": "n_threads=",
    "num_gpu": _DEVICE,
    "client_kwargs": "drop it: there is no HTTP client (embellama runs in your process)",
    "temperature": _NOT_SAMPLING,
    "top_k": _NOT_SAMPLING,
    "top_p": _NOT_SAMPLING,
    "mirostat": _NOT_SAMPLING,
    "repeat_penalty": _NOT_SAMPLING,
    "stop": _NOT_SAMPLING,
    # embellama's own options before 0.1.0
    "truncate": "use long_text_mode='truncate' (truncate=True) or long_text_mode='raise' (truncate=False); "
    "long_text_mode='mean' averages an over-long text's chunks",
}
"""Foreign keyword (or an embellama option that was replaced) → the embellama equivalent, in words (``name=`` means
a keyword embellama takes)."""


def hint_for(name: str, value: Any = None) -> str | None:
    """What to use instead of the foreign keyword ``name`` (given ``value``, inner keys of ``model_kwargs`` /
    ``encode_kwargs`` are explained one by one), or None when ``name`` is not a known foreign keyword."""
    hint = HINTS.get(name)
    if hint is None:
        return None
    if name in ("model_kwargs", "encode_kwargs", "query_encode_kwargs") and isinstance(value, Mapping) and value:
        inner = []
        for key in value:
            if key == "normalize_embeddings":
                inner.append(f"{key} → normalize={value[key]!r}")
                continue
            known = HINTS.get(str(key))
            inner.append(f"{key} → {known}" if known else f"{key}: no embellama equivalent")
        return "; ".join(inner)
    return hint


def unknown_options_error(
    given: Mapping[str, Any] | Iterable[str], known: Iterable[str], *, where: str = "embellama"
) -> ConfigurationError:
    """The error for keywords ``where`` does not take: each named with its embellama equivalent (from
    :data:`HINTS`), or with the closest known keyword, and the known ones listed."""
    values = given if isinstance(given, Mapping) else dict.fromkeys(given)
    known = sorted(set(known))
    parts = []
    for name in sorted(values):
        hint = hint_for(name, values[name])
        if hint is None:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"did you mean {close[0]}=?" if close else "not an embellama option"
        parts.append(f"{name!r}: {hint}")
    return ConfigurationError(
        f"{where} does not take {', '.join(repr(n) for n in sorted(values))}: "
        + "; ".join(parts)
        + f". Its options are {known} (see docs/migration.md)"
    )


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def looks_like_hub_id(name: str | Path) -> bool:
    """Whether ``name`` reads like a hub repository id (``org/model``) rather than a GGUF file."""
    text = str(name)
    return bool(_HUB_ID.match(text)) and not text.lower().endswith(".gguf") and not Path(text).expanduser().exists()


def hub_id_hint(name: str | Path) -> str:
    """What to do with a hub repository id given where a GGUF file is expected."""
    text = str(name)
    default = text.lower().rsplit("/", 1)[-1] == "all-minilm-l6-v2"
    return (
        f"{text!r} looks like a Hugging Face hub repository id, not a GGUF file: embellama loads GGUF files. "
        + (
            "all-MiniLM-L6-v2 is embellama's default model: leave model_name/model_path out to use it (built "
            "locally from these weights), or "
            if default
            else ""
        )
        + "use .from_pretrained('org/model-GGUF', 'model-q8_0.gguf') for a GGUF repository on the hub, or "
        "model_path='/path/model.gguf' for a local file"
    )
