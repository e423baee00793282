"""Sizing a model's contexts by what one decode needs, never by the model's context length, and refusing a load
that cannot fit in memory before llama.cpp allocates anything.

- **Encoders** (bidirectional attention: BERT, NomicBERT, ...) see a whole text in one ubatch, so a decode holds
  ``max(batch_tokens, input limit)`` tokens; the input limit defaults to ``min(training context, 8192)``.
- **Decoders** (causal attention: Qwen3, Gemma, ...) keep earlier tokens in their memory, so a long text is fed in
  several decodes of ``n_ubatch`` tokens; only the memory (KV cache) holds the whole text. llama.cpp's decoder
  graphs compute vocabulary-wide logits for every token of a ubatch, so ``n_ubatch`` is kept small enough that
  they stay near :data:`DECODER_LOGITS_BYTES` (a 262k-token vocabulary: 256 tokens, ~270 MB).

The estimate is calibrated on llama.cpp's own reports (``compute buffer size`` / ``KV buffer size``) for the
default model and gemma-3-270m; it errs on the high side.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from embellama.errors import ModelLoadError

__all__ = [
    "DECODER_LOGITS_BYTES",
    "ENCODER_DEFAULT_LIMIT",
    "DecodeShape",
    "MemoryEstimate",
    "available_memory",
    "check_memory",
    "decode_shape",
    "estimate_memory",
]

ENCODER_DEFAULT_LIMIT = 8192
"""Default input limit (tokens) when a GGUF records none below its training context."""

DECODER_LOGITS_BYTES = 256 << 20
"""Target size of a decoder's per-ubatch logits (``n_ubatch x n_vocab x 4`` bytes)."""

MEMORY_SHARE = 0.8
"""Share of the available memory one load may plan to use (all of its workers' contexts together)."""


@dataclass(frozen=True)
class DecodeShape:
    """How one model instance decodes."""

    causal: bool
    n_ubatch: int
    """Tokens per ``llama_decode`` call (llama.cpp's ``n_batch`` = ``n_ubatch``)."""
    n_ctx: int
    """Tokens one group of texts may hold in total (the memory of a decoder; one ubatch for an encoder)."""
    n_seq: int
    """Texts per group (llama.cpp's ``n_seq_max``)."""


def decode_shape(*, causal: bool, limit: int, batch_tokens: int, max_texts: int, n_vocab: int) -> DecodeShape:
    """The decode shape for a model with input ``limit`` tokens (see the module docstring)."""
    if causal:
        by_vocab = max(32, DECODER_LOGITS_BYTES // max(1, 4 * n_vocab))
        n_ubatch = max(1, min(batch_tokens, by_vocab))
        n_seq = min(max_texts, n_ubatch)
        n_ubatch = max(n_seq, n_ubatch // n_seq * n_seq)
        n_ctx = max(limit, n_ubatch)
        return DecodeShape(True, n_ubatch, n_ctx, n_seq)
    n_ubatch = max(batch_tokens, limit)
    n_seq = min(max_texts, n_ubatch)
    # llama.cpp reserves its graph with n_ubatch / n_seq_max tokens per sequence; unless that divides evenly,
    # native pooling trips GGML_ASSERT(ggml_can_mul_mat) at context creation (found by test_broken_models)
    n_ubatch = -(-n_ubatch // n_seq) * n_seq
    return DecodeShape(False, n_ubatch, n_ubatch, n_seq)


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes one context needs beyond the (shared) weights."""

    compute: int
    kv: int

    @property
    def total(self) -> int:
        """Compute buffers plus KV cache."""
        return self.compute + self.kv


def _first(value: Any, default: int) -> int:
    if isinstance(value, list):
        value = max(value) if value else None
    return int(value) if value else default


def _array_length(value: Any) -> int:
    if isinstance(value, list):
        return len(value)
    match = re.fullmatch(r"<array\[(\d+)\]>", str(value))
    return int(match.group(1)) if match else 0


def estimate_memory(metadata: dict[str, Any], shape: DecodeShape, *, flash_attn: bool) -> MemoryEstimate:
    """What one context of ``shape`` will allocate, from the GGUF's hyperparameters."""
    arch = str(metadata.get("general.architecture", ""))

    def hp(key: str, default: int) -> int:
        return _first(metadata.get(f"{arch}.{key}"), default)

    n_embd = hp("embedding_length", 768)
    n_head = hp("attention.head_count", 12)
    n_head_kv = hp("attention.head_count_kv", n_head)
    head_k = hp("attention.key_length", n_embd // max(1, n_head))
    head_v = hp("attention.value_length", head_k)
    n_ff = hp("feed_forward_length", 4 * n_embd)
    n_layer = hp("block_count", 12)
    n_vocab = _array_length(metadata.get("tokenizer.ggml.tokens")) if shape.causal else 0
    per_token = n_vocab + n_ff + 2 * n_embd + 3 * n_head * head_k
    compute = int(1.2 * shape.n_ubatch * per_token * 4)
    if not flash_attn:  # attention scores and their softmax
        compute += 2 * shape.n_ubatch * shape.n_ctx * n_head * 4
    kv = shape.n_ctx * n_layer * n_head_kv * (head_k + head_v) * 2 if shape.causal else 0
    return MemoryEstimate(compute, kv)


def available_memory() -> int | None:
    """Bytes the kernel says are available (``MemAvailable``), or None off Linux."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):  # pragma: no cover - not Linux
        return None
    return None  # pragma: no cover


def check_memory(
    name: str, estimate: MemoryEstimate, *, n_workers: int, limit: int, available: int | None = None
) -> None:
    """Raise ``ModelLoadError`` naming the needed MB and the options to change when the contexts cannot fit."""
    available = available_memory() if available is None else available
    need = estimate.total * n_workers
    if available is None or need <= MEMORY_SHARE * available:
        return
    mb = 1 << 20
    raise ModelLoadError(
        f"model {name!r} would need about {need // mb} MB for {n_workers} context(s) (compute {estimate.compute // mb}"
        f" MB + KV cache {estimate.kv // mb} MB each, input limit {limit} tokens) but {available // mb} MB are "
        "available; lower max_tokens (the input limit), n_workers or batch_tokens"
    )
