"""The child side of process isolation, run as ``python -m embellama.runtime.child FD``.

It is started as a fresh interpreter that imports only embellama (never the user's ``__main__``), so isolation
works from plain scripts without an ``if __name__ == "__main__":`` guard, from notebooks and from ``python -c``.
Messages are pickled over the socket ``FD`` (see :mod:`embellama.runtime.isolation` for the protocol):

- parent → child: ``("load", ModelConfig)`` once, then ``("serve", [Payload, ...])`` or ``("stop",)``;
- child → parent: ``("ok", value)``, ``("error", exception)``, and ``("beat",)`` after every decode, so the
  parent can tell a slow round from a stuck one.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
from multiprocessing.connection import Connection
from typing import Any

__all__ = ["main"]


def main(fd: int) -> int:
    """Serve one model over the socket ``fd`` until told to stop or the parent goes away."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it stops us
    os.environ.setdefault("GGML_NO_BACKTRACE", "1")  # an abort must not stall attaching a debugger
    conn = Connection(socket.socket(fileno=fd).detach())
    from embellama.model.contract import run_round
    from embellama.model.embedding import EmbeddingModel

    try:
        _kind, config = conn.recv()
    except (EOFError, OSError):
        return 0
    model = EmbeddingModel(config)
    try:
        info = model.load().info()
    except BaseException as exc:  # re-raised in the parent
        send(conn, ("error", exc))
        return 0
    try:
        send(conn, ("ok", info))
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                break  # the parent is gone
            if message[0] != "serve":
                break
            outcomes = run_round(model, message[1], on_decode=lambda: send(conn, ("beat",)))
            send(conn, ("ok", outcomes))
            del message, outcomes  # the round's texts and vectors are not kept while waiting for the next one
    finally:
        model.unload()
        conn.close()
    return 0


def send(conn: Connection, message: tuple[Any, ...]) -> None:
    """Send ``message``; an outcome that cannot be pickled is replaced by an ``EmbeddingError`` describing it,
    one outcome at a time, so one request's unpicklable failure never fails its neighbours."""
    from embellama.errors import EmbeddingError

    try:
        conn.send(message)
    except (OSError, EOFError):  # pragma: no cover - the parent is gone
        return
    except Exception:  # pickling failed: send a description instead
        status, value = message
        if isinstance(value, list):
            value = [_picklable(v, EmbeddingError) for v in value]
        else:
            value = EmbeddingError(repr(value))
        with contextlib.suppress(Exception):
            conn.send((status, value))


def _picklable(value: Any, fallback: type[Exception]) -> Any:
    import pickle

    try:
        pickle.dumps(value)
    except Exception:
        return fallback(repr(value))
    return value


if __name__ == "__main__":  # pragma: no cover - runs in the child process
    sys.exit(main(int(sys.argv[1])))
