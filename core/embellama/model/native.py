"""The native layer: the llama.cpp objects embellama uses, each owned here with an explicit ``close()``.

- :class:`NativeWeights`: a ``llama_model`` (weights + vocabulary), shared by every context that decodes with the
  same file identity and load options (see :func:`acquire_weights`); read-only in llama.cpp, so contexts on
  different threads may share it.
- :class:`NativeContext`: a ``llama_context`` sized for one decode, used by one thread for its whole life.
- :class:`DecodeBatch`: a ``llama_batch`` whose arrays are numpy buffers, filled with vectorized writes.

Only llama-cpp-python's public low-level bindings (``llama_cpp.llama_*``) are used, never its private
``_internals``. Supported llama-cpp-python versions: :data:`SUPPORTED_VERSIONS` (pinned in pyproject.toml).
"""

from __future__ import annotations

import ctypes
import threading
import warnings
from functools import cache
from pathlib import Path
from typing import Any

import llama_cpp
import numpy as np
import numpy.typing as npt

from embellama import cpu, lifecycle
from embellama.files.identity import FileIdentity

__all__ = [
    "SUPPORTED_VERSIONS",
    "DecodeBatch",
    "NativeContext",
    "NativeWeights",
    "acquire_weights",
    "amx_crash_risk",
    "forget_after_fork",
    "system_info",
]

SUPPORTED_VERSIONS = ">=0.3.36,<0.4"
"""llama-cpp-python versions this layer is tested on (the low-level API changes between minor versions)."""


def _version_supported(version: str) -> bool:
    parts = tuple(int(p) for p in version.split(".")[:3] if p.isdigit())
    return (0, 3, 36) <= parts < (0, 4)


if not _version_supported(getattr(llama_cpp, "__version__", "0")):  # pragma: no cover - depends on the install
    warnings.warn(
        f"embellama is tested with llama-cpp-python {SUPPORTED_VERSIONS}, found {llama_cpp.__version__}",
        RuntimeWarning,
        stacklevel=2,
    )

_MODEL_PARAM_FIELDS = {name for name, *_ in llama_cpp.llama_model_params._fields_}


def _model_params(n_gpu_layers: int, use_mmap: bool) -> Any:
    params = llama_cpp.llama_model_default_params()
    params.n_gpu_layers = n_gpu_layers
    if "load_mode" in _MODEL_PARAM_FIELDS:  # 0.3.3x: llama_load_mode replaced the use_mmap flag
        params.load_mode = llama_cpp.LLAMA_LOAD_MODE_MMAP if use_mmap else llama_cpp.LLAMA_LOAD_MODE_NONE
    else:  # pragma: no cover - older bindings
        params.use_mmap = use_mmap
    return params


class NativeWeights:
    """One loaded ``llama_model``. Create through :func:`acquire_weights` so identical loads share it."""

    def __init__(self, path: Path, n_gpu_layers: int, use_mmap: bool) -> None:
        model = llama_cpp.llama_model_load_from_file(str(path).encode("utf-8"), _model_params(n_gpu_layers, use_mmap))
        if not model:
            raise RuntimeError("llama_model_load_from_file returned no model")
        self.model: Any = model
        self.vocab: Any = llama_cpp.llama_model_get_vocab(model)
        self.n_embd = int(llama_cpp.llama_model_n_embd(model))
        self.n_cls_out = int(llama_cpp.llama_model_n_cls_out(model))
        self.add_bos = bool(llama_cpp.llama_vocab_get_add_bos(self.vocab))
        self.add_eos = bool(llama_cpp.llama_vocab_get_add_eos(self.vocab))
        self.add_sep = bool(llama_cpp.llama_vocab_get_add_sep(self.vocab))
        self.bos = int(llama_cpp.llama_vocab_bos(self.vocab))
        self.eos = int(llama_cpp.llama_vocab_eos(self.vocab))

    def tokenize(self, text: str, *, add_special: bool = True) -> list[int]:
        """Token ids of ``text`` (special tokens added as the vocabulary says; special text not parsed)."""
        data = text.encode("utf-8")
        capacity = len(data) + 8
        buffer = (llama_cpp.llama_token * capacity)()
        n = llama_cpp.llama_tokenize(self.vocab, data, len(data), buffer, capacity, add_special, False)
        if n < 0:  # pragma: no cover - more tokens than bytes + 8 is impossible for llama.cpp's tokenizers
            capacity = -n
            buffer = (llama_cpp.llama_token * capacity)()
            n = llama_cpp.llama_tokenize(self.vocab, data, len(data), buffer, capacity, add_special, False)
        return list(buffer[:n])

    def vocabulary(self) -> list[tuple[int, str, bool]]:
        """Every token as ``(id, text, is_control)``."""
        control = llama_cpp.LLAMA_TOKEN_ATTR_CONTROL
        return [
            (
                i,
                llama_cpp.llama_vocab_get_text(self.vocab, i).decode("utf-8", errors="replace"),
                bool(llama_cpp.llama_vocab_get_attr(self.vocab, i) & control),
            )
            for i in range(llama_cpp.llama_vocab_n_tokens(self.vocab))
        ]

    def close(self) -> None:
        """Free the model (idempotent)."""
        model, self.model = self.model, None
        if model:
            llama_cpp.llama_model_free(model)


WeightsKey = tuple[FileIdentity, int, bool]
_shared: dict[WeightsKey, list[Any]] = {}  # key -> [NativeWeights, users]
_shared_lock = threading.Lock()


def acquire_weights(path: Path, identity: FileIdentity, n_gpu_layers: int, use_mmap: bool) -> NativeWeights:
    """The weights of the file ``identity`` names, loaded once per (identity, load options) and shared.

    Keyed by file identity, not path: a GGUF replaced on disk under the same name is loaded anew. Pair every call
    with :func:`release_weights`.
    """
    key = (identity, n_gpu_layers, use_mmap)
    with _shared_lock:
        entry = _shared.get(key)
        if entry is None:
            entry = _shared[key] = [NativeWeights(path, n_gpu_layers, use_mmap), 0]
        entry[1] += 1
        weights: NativeWeights = entry[0]
        return weights


def release_weights(weights: NativeWeights) -> None:
    """Drop one user of ``weights``; the last one frees them."""
    with _shared_lock:
        for key, entry in list(_shared.items()):
            if entry[0] is weights:
                entry[1] -= 1
                if entry[1] <= 0:
                    del _shared[key]
                    weights.close()
                return


def forget_after_fork() -> None:
    """In a forked child: drop the parent's registry without freeing (the parent's threads may be using it)."""
    global _shared_lock
    _shared.clear()
    _shared_lock = threading.Lock()


lifecycle.at_fork_in_child(forget_after_fork)


class NativeContext:
    """A ``llama_context`` for embeddings: one decode holds ``n_tokens`` tokens of up to ``n_seq`` sequences, and
    its memory (causal models) ``n_ctx`` tokens (defaults to ``n_tokens``)."""

    def __init__(
        self,
        weights: NativeWeights,
        *,
        n_tokens: int,
        n_seq: int,
        n_threads: int,
        pooling_type: int,
        flash_attn: bool,
        n_ctx: int | None = None,
    ) -> None:
        params = llama_cpp.llama_context_default_params()
        params.n_batch = params.n_ubatch = n_tokens
        params.n_ctx = n_ctx or n_tokens
        params.n_seq_max = n_seq
        params.n_threads = params.n_threads_batch = n_threads
        params.embeddings = True
        params.pooling_type = pooling_type
        params.flash_attn_type = (
            llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attn else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        )
        params.kv_unified = True
        ctx = llama_cpp.llama_init_from_model(weights.model, params)
        if not ctx:
            raise RuntimeError("llama_init_from_model returned no context")
        self.ctx: Any = ctx
        self.n_threads = n_threads
        self.memory: Any = llama_cpp.llama_get_memory(ctx)

    def set_threads(self, n_threads: int) -> None:
        """Use ``n_threads`` for the next decodes (a no-op when unchanged)."""
        if n_threads != self.n_threads:
            llama_cpp.llama_set_n_threads(self.ctx, n_threads, n_threads)
            self.n_threads = n_threads

    def run(self, batch: DecodeBatch, *, clear: bool = True) -> int:
        """Decode ``batch``; encoder-only models (no memory) go through ``llama_encode``. Returns llama.cpp's code.

        With ``clear=False`` a causal model keeps what earlier decodes of the same sequences left in its memory
        (a long text is fed in several decodes, each continuing where the last stopped).
        """
        if self.memory:
            if clear:
                llama_cpp.llama_memory_clear(self.memory, True)
            return int(llama_cpp.llama_decode(self.ctx, batch.batch))
        return int(llama_cpp.llama_encode(self.ctx, batch.batch))

    def sequence_embedding(self, seq: int, dim: int) -> npt.NDArray[np.float32] | None:
        """The pooled embedding of sequence ``seq`` (a view into llama.cpp's buffer), or None."""
        ptr = llama_cpp.llama_get_embeddings_seq(self.ctx, seq)
        return np.ctypeslib.as_array(ptr, shape=(dim,)) if ptr else None

    def token_embeddings(self, n_tokens: int, dim: int) -> npt.NDArray[np.float32] | None:
        """The per-token embeddings of the last decode (a view), or None."""
        ptr = llama_cpp.llama_get_embeddings(self.ctx)
        return np.ctypeslib.as_array(ptr, shape=(n_tokens, dim)) if ptr else None

    def close(self) -> None:
        """Free the context (idempotent)."""
        ctx, self.ctx = self.ctx, None
        if ctx:
            llama_cpp.llama_free(ctx)


class DecodeBatch:
    """A ``llama_batch`` whose arrays are numpy buffers, filled with vectorized writes (no per-token Python)."""

    def __init__(self, n_tokens: int, n_seq_max: int) -> None:
        self.capacity = n_tokens
        self.tokens = np.zeros(n_tokens, dtype=np.int32)
        self.pos = np.zeros(n_tokens, dtype=np.int32)
        self.n_seq_id = np.ones(n_tokens, dtype=np.int32)
        self.logits = np.ones(n_tokens, dtype=np.int8)
        self.seq_values = np.arange(n_seq_max, dtype=np.int32)
        self.seq_ptrs = np.zeros(n_tokens, dtype=np.uintp)
        self.batch = llama_cpp.llama_batch()
        b: Any = self.batch  # ctypes fields typed as arrays in the stubs; they take pointers
        b.token = self.tokens.ctypes.data_as(ctypes.POINTER(llama_cpp.llama_token))
        b.embd = ctypes.POINTER(ctypes.c_float)()
        b.pos = self.pos.ctypes.data_as(ctypes.POINTER(llama_cpp.llama_pos))
        b.n_seq_id = self.n_seq_id.ctypes.data_as(ctypes.POINTER(ctypes.c_int32))
        b.seq_id = ctypes.cast(self.seq_ptrs.ctypes.data, ctypes.POINTER(ctypes.POINTER(llama_cpp.llama_seq_id)))
        b.logits = self.logits.ctypes.data_as(ctypes.POINTER(ctypes.c_int8))

    def fill(
        self,
        sequences: list[npt.NDArray[np.int32]],
        *,
        starts: list[int] | None = None,
        seq_ids: list[int] | None = None,
    ) -> int:
        """Put token runs in the batch and return the token count.

        Args:
            sequences: One int32 token array per run.
            starts: Position of each run's first token in its sequence (a continued sequence starts past 0).
                Defaults to 0 for every run.
            seq_ids: The sequence each run belongs to. Defaults to 0..k-1.
        """
        lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
        n = int(lengths.sum())
        if n > self.capacity or len(sequences) > len(self.seq_values):
            raise ValueError(f"batch overflow: {n} tokens / {len(sequences)} sequences")
        offsets = np.cumsum(lengths) - lengths
        first = np.zeros(len(sequences), dtype=np.int64) if starts is None else np.asarray(starts, dtype=np.int64)
        ids = np.arange(len(sequences)) if seq_ids is None else np.asarray(seq_ids, dtype=np.int64)
        self.tokens[:n] = np.concatenate(sequences)
        self.pos[:n] = np.arange(n) - np.repeat(offsets - first, lengths)
        self.seq_ptrs[:n] = self.seq_values.ctypes.data + 4 * np.repeat(ids, lengths)
        self.batch.n_tokens = n
        return n


@cache
def system_info() -> str:
    """llama.cpp's description of its build (``AVX2 = 1 | AMX_INT8 = 1 | ...``)."""
    return bytes(llama_cpp.llama_print_system_info()).decode("utf-8", errors="replace")


def supports_gpu_offload() -> bool:
    """Whether this llama-cpp-python build can offload layers to a GPU."""
    return bool(llama_cpp.llama_supports_gpu_offload())


def amx_crash_risk(info: str | None = None, cpu_flags: set[str] | None = None) -> str | None:
    """Explain why quantized models would crash this process, or return None.

    A native (``-march=native``) build on a CPU whose CPUID advertises AMX compiles AMX kernels; in VMs where
    the kernel does not enable AMX (no ``amx_tile`` in /proc/cpuinfo) the first quantized matmul faults.
    """
    info = system_info() if info is None else info
    flags = cpu.cpu_flags() if cpu_flags is None else cpu_flags
    if "AMX_INT8 = 1" in info and flags and "amx_tile" not in flags:
        return (
            "this llama-cpp-python build uses AMX kernels but the OS does not enable AMX (no 'amx_tile' in "
            "/proc/cpuinfo): quantized models would crash the process. Rebuild llama-cpp-python without "
            "GGML_NATIVE (see README: 'Building llama-cpp-python'), use an F16/BF16/F32 model, or pass "
            "isolation='process'"
        )
    return None
