"""Process-level lifecycle, in one place: interpreter exit, ``os.fork()``, and engines dropped without ``close()``.

- **Exit.** One ``atexit`` hook closes every open engine and waits for decodes already inside llama.cpp: exiting
  while a worker thread decodes runs llama.cpp's static destructors under it (SIGSEGV). Queued requests fail at
  once and a round stops after its current decode, so this is normally well under a second. Should a native call
  still run after :data:`EXIT_TIMEOUT`, the process leaves with ``os._exit(1)`` rather than die by a signal.
- **Fork.** Worker threads do not survive ``os.fork()`` (gunicorn ``--preload``, celery prefork, multiprocessing's
  *fork*). In the child, every engine forgets the parent's workers without touching their native objects, and
  re-creates them lazily on the next request; the parent is untouched.
- **Dropped engines.** A finalizer stops the workers of an engine that is garbage-collected while open.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
import weakref
from collections.abc import Callable
from typing import Protocol

__all__ = ["EXIT_TIMEOUT", "Closable", "at_fork_in_child", "track"]

logger = logging.getLogger(__name__)

EXIT_TIMEOUT = 120.0
"""Seconds interpreter exit waits for workers to finish the decode they are running."""


class Closable(Protocol):
    """What the lifecycle hooks need of an engine (its model registry)."""

    def close(self, timeout: float | None = ...) -> None:
        """Stop every worker, waiting up to ``timeout`` seconds."""

    def after_fork_in_child(self) -> None:
        """Forget workers that did not survive a fork."""

    def running_threads(self) -> list[threading.Thread]:
        """Worker threads still inside a native call after ``close`` returned."""


_open: weakref.WeakSet[Closable] = weakref.WeakSet()
_fork_callbacks: list[Callable[[], None]] = []


def track(engine: Closable, stop_when_dropped: Callable[[], None]) -> None:
    """Close ``engine`` at interpreter exit and adopt it after a fork; call ``stop_when_dropped`` if it is
    garbage-collected while open (it must not reference the engine)."""
    _open.add(engine)
    finalizer = weakref.finalize(engine, stop_when_dropped)
    finalizer.atexit = False  # exit is handled by _close_at_exit, which waits for native calls


def untrack(engine: Closable) -> None:
    """Forget a closed engine."""
    _open.discard(engine)


def at_fork_in_child(callback: Callable[[], None]) -> None:
    """Run ``callback`` in the child after ``os.fork()`` (module state such as locks is reset there)."""
    _fork_callbacks.append(callback)


def _after_fork_in_child() -> None:
    for callback in _fork_callbacks:
        callback()
    for engine in list(_open):
        engine.after_fork_in_child()


@atexit.register
def _close_at_exit() -> None:
    engines = list(_open)
    done = threading.Event()

    def close_all() -> None:
        for engine in engines:
            try:
                engine.close(timeout=EXIT_TIMEOUT)
            except Exception:  # pragma: no cover - never let one engine stop the others from closing
                logger.exception("closing an engine at exit failed")
        done.set()

    if not engines:
        return
    closer = threading.Thread(target=close_all, name="embellama-exit", daemon=True)
    closer.start()
    finished = done.wait(EXIT_TIMEOUT + 10.0)
    if not finished or any(e.running_threads() for e in engines):  # pragma: no cover - a native call that hangs
        print(
            "embellama: a llama.cpp call was still running at interpreter exit; exiting without teardown",
            file=sys.stderr,
            flush=True,
        )
        sys.stdout.flush()
        os._exit(1)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
