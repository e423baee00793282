"""Thin helpers over llama-cpp-python's low-level API: logging, build checks, the reusable decode batch.

Only the model thread (or the isolated child process) calls into a context; nothing here is shared state
except the log callback, which llama.cpp calls from any thread.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from collections import deque
from functools import cache
from pathlib import Path
from typing import Any

import llama_cpp
import numpy as np
import numpy.typing as npt

__all__ = ["DecodeBatch", "amx_crash_risk", "install_log_handler", "recent_native_errors", "system_info"]

logger = logging.getLogger("embellama.llama_cpp")

# ggml.h: NONE=0, DEBUG=1, INFO=2, WARN=3, ERROR=4, CONT=5 (continues the previous message). llama-cpp-python's
# own table still uses an older order, which shows warnings as errors.
_GGML_LEVELS = {0: logging.CRITICAL, 1: logging.DEBUG, 2: logging.INFO, 3: logging.WARNING, 4: logging.ERROR}
_recent: deque[str] = deque(maxlen=20)
_state = {"echo": 0, "last_level": logging.DEBUG}
_lock = threading.Lock()


@llama_cpp.llama_log_callback  # type: ignore[untyped-decorator]
def _log_callback(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    py_level = _state["last_level"] if level == 5 else _GGML_LEVELS.get(level, logging.DEBUG)
    _state["last_level"] = py_level
    message = text.decode("utf-8", errors="replace")
    if py_level >= logging.ERROR:
        _recent.append(message.strip())
    if _state["echo"] > 0:
        import sys

        print(message, end="", file=sys.stderr, flush=True)
    elif message.strip():
        logger.log(py_level, "%s", message.rstrip())


def install_log_handler() -> None:
    """Route llama.cpp's log to the ``embellama.llama_cpp`` logger (quiet by default)."""
    llama_cpp.llama_log_set(_log_callback, ctypes.c_void_p(0))


def set_echo(on: bool) -> None:
    """Count a verbose model in (``on``) or out: llama.cpp's log goes to stderr while any is verbose."""
    with _lock:
        _state["echo"] = max(0, _state["echo"] + (1 if on else -1))


def recent_native_errors() -> str:
    """The last few error lines llama.cpp logged, for error messages."""
    return " | ".join(line for line in list(_recent)[-5:] if line)


def clear_native_errors() -> None:
    """Forget logged errors (called before a load, so its message shows only its own)."""
    _recent.clear()


@cache
def system_info() -> str:
    """llama.cpp's description of its build (``AVX2 = 1 | AMX_INT8 = 1 | ...``)."""
    return bytes(llama_cpp.llama_print_system_info()).decode("utf-8", errors="replace")


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def amx_crash_risk(info: str | None = None, cpu_flags: set[str] | None = None) -> str | None:
    """Explain why quantized models would crash this process, or return None.

    A native (``-march=native``) build on a CPU whose CPUID advertises AMX compiles AMX kernels; in VMs where
    the kernel does not enable AMX (no ``amx_tile`` in /proc/cpuinfo) the first quantized matmul faults.
    """
    info = system_info() if info is None else info
    flags = _cpu_flags() if cpu_flags is None else cpu_flags
    if "AMX_INT8 = 1" in info and flags and "amx_tile" not in flags:
        return (
            "this llama-cpp-python build uses AMX kernels but the OS does not enable AMX (no 'amx_tile' in "
            "/proc/cpuinfo): quantized models would crash the process. Rebuild llama-cpp-python without "
            "GGML_NATIVE (see README: 'Building llama-cpp-python'), use an F16/F32 model, or pass "
            "isolation='process'"
        )
    return None


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

    def fill(self, sequences: list[npt.NDArray[np.int32]]) -> int:
        """Put ``sequences`` (one int32 token array each) in the batch as sequences 0..k-1; return token count."""
        lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
        n = int(lengths.sum())
        if n > self.capacity or len(sequences) > len(self.seq_values):
            raise ValueError(f"batch overflow: {n} tokens / {len(sequences)} sequences")
        starts = np.cumsum(lengths) - lengths
        self.tokens[:n] = np.concatenate(sequences)
        self.pos[:n] = np.arange(n) - np.repeat(starts, lengths)
        seq_of_token = np.repeat(np.arange(len(sequences)), lengths)
        self.seq_ptrs[:n] = self.seq_values.ctypes.data + 4 * seq_of_token
        self.batch.n_tokens = n
        return n
