"""Routing llama.cpp's log into Python logging (quiet by default), and remembering its recent errors.

llama.cpp calls the log callback from any thread; nothing here touches a model or a context.
"""

from __future__ import annotations

import ctypes
import logging
import re
import sys
import threading
from collections import deque

import llama_cpp

from embellama import lifecycle

__all__ = ["clear_native_errors", "install_log_handler", "measure_buffers", "recent_native_errors", "set_echo"]

logger = logging.getLogger("embellama.llama_cpp")

# ggml.h: NONE=0, DEBUG=1, INFO=2, WARN=3, ERROR=4, CONT=5 (continues the previous message). llama-cpp-python's
# own table still uses an older order, which shows warnings as errors. llama.cpp's INFO is load chatter (hundreds
# of lines per load): it goes to DEBUG, and embellama logs one INFO line per loaded model itself.
_GGML_LEVELS = {0: logging.CRITICAL, 1: logging.DEBUG, 2: logging.DEBUG, 3: logging.WARNING, 4: logging.ERROR}
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
    sizes = getattr(_buffers, "sizes", None)
    if sizes is not None and "buffer size" in message:
        match = _BUFFER.search(message)
        kind = next((k for k, word in _KINDS if word in message), None)
        if match and kind is not None:
            sizes[kind] = sizes.get(kind, 0.0) + float(match.group(1))
    if _state["echo"] > 0:
        print(message, end="", file=sys.stderr, flush=True)
    elif message.strip():
        logger.log(py_level, "%s", message.rstrip())


_buffers = threading.local()
_BUFFER = re.compile(r"buffer size\s*=\s*([0-9.]+) MiB")
_KINDS = (("kv", "KV"), ("compute", "compute"), ("output", "output"))  # the model (weights) buffer is not counted


def measure_buffers() -> dict[str, float]:
    """Start recording, on this thread, the buffer sizes llama.cpp reports (MiB by kind: compute, kv, output);
    the returned dict fills as contexts are created here."""
    sizes: dict[str, float] = {}
    _buffers.sizes = sizes
    return sizes


def _reset_after_fork() -> None:
    global _lock
    _lock = threading.Lock()


lifecycle.at_fork_in_child(_reset_after_fork)


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
