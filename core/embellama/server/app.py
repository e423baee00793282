"""An OpenAI-compatible embeddings (and rerank) server over the engine: ``embellama serve`` (extra ``server``).

Concurrent requests share decodes through the engine's micro-batching: a request's texts are queued as jobs and
awaited, never computed on the event loop. Endpoints:

- ``POST /v1/embeddings`` — OpenAI's schema: ``input`` (a string or a list of strings), ``model``,
  ``encoding_format`` (``float`` | ``base64``: little-endian float32), ``dimensions``, ``user``; extra fields
  ``prompt_name`` (the model's named prompt, e.g. ``"query"``) or ``prompt``.
- ``POST /v1/rerank`` — Jina/Cohere shape: ``query``, ``documents``, ``top_n``, ``return_documents``.
- ``GET /v1/models``, ``GET /health`` (per-model worker state; 503 while a model has no live worker or the server
  drains), ``GET /metrics`` (Prometheus text format; see :mod:`embellama.server.metrics`).

Errors use OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``; every malformed body is a 4xx and the
server keeps serving after each. The default host is loopback; ``--api-key`` (or ``$EMBELLAMA_API_KEY``) requires
``Authorization: Bearer KEY``. :func:`serve` runs the app under uvicorn with the connection guard of
:mod:`embellama.server.guard` (header/body deadlines, a connection cap, a graceful drain).

This module wires the app; the parts are :mod:`~embellama.server.limits` (:class:`ServerLimits`),
:mod:`~embellama.server.auth` (the API key), :mod:`~embellama.server.schemas` (request bodies parsed and validated),
:mod:`~embellama.server.routes` (the handlers), :mod:`~embellama.server.responses` (response bodies),
:mod:`~embellama.server.endpoint` (what wraps every handler), :mod:`~embellama.server.errors` (OpenAI's error
shape) and :mod:`~embellama.server.metrics`.
"""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import uvicorn
from starlette.applications import Starlette

from embellama.engine.engine import EmbeddingEngine
from embellama.server.auth import check_api_key
from embellama.server.errors import http_error
from embellama.server.guard import Drain, DrainingServer, GuardSettings, default_backlog, guarded_protocol
from embellama.server.limits import ServerLimits
from embellama.server.metrics import Metrics
from embellama.server.routes import Routes

__all__ = ["ServerLimits", "build_server", "check_api_key", "create_app", "serve"]


def create_app(
    engine: EmbeddingEngine,
    *,
    api_key: str | None = None,
    limits: ServerLimits | None = None,
    close_engine: bool = True,
) -> Starlette:
    """The ASGI app serving ``engine``'s loaded models (run it with :func:`build_server`, or ``embellama serve``).

    Args:
        engine: An engine with the models to serve loaded (their names are the API's ``model`` ids).
        api_key: Require ``Authorization: Bearer <api_key>`` (printable ASCII). Defaults to none (serve loopback
            only then).
        limits: Request, connection and queue limits. Defaults to :class:`ServerLimits`.
        close_engine: Close the engine when the server shuts down (after in-flight requests finish).

    Raises:
        ConfigurationError: the API key has characters HTTP clients cannot send.
    """
    key = check_api_key(api_key)
    limits = limits or ServerLimits()
    metrics, drain = Metrics(), Drain(limits.drain_seconds)
    guard = GuardSettings(limits.header_timeout, limits.body_timeout, limits.max_connections)
    metrics.connections = guard.report
    app = Starlette(
        routes=Routes(engine, limits, metrics, drain).table(key),
        lifespan=_lifespan(engine, close_engine),
        exception_handlers={404: http_error, 405: http_error},
    )
    app.state.metrics, app.state.limits, app.state.drain, app.state.guard = metrics, limits, drain, guard
    return app


def _lifespan(engine: EmbeddingEngine, close_engine: bool) -> Callable[[Starlette], AbstractAsyncContextManager[None]]:
    """The app's lifespan: nothing at start; at shutdown (in-flight requests done) the engine closed if asked."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        if close_engine:
            await engine.aclose()

    return lifespan


def build_server(
    app: Starlette, *, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info"
) -> DrainingServer:
    """A ``uvicorn.Server`` for an app of :func:`create_app`, with its connection guard and graceful drain.

    Args:
        app: The app (its ``ServerLimits`` set the timeouts, the connection cap and the drain time).
        host: Interface to listen on. Defaults to loopback.
        port: TCP port (0: any free one). Defaults to 8000.
        log_level: uvicorn's log level. Defaults to ``"info"``.

    Returns:
        A :class:`~embellama.server.guard.DrainingServer` (``.run()`` blocks until SIGTERM/SIGINT or
        ``should_exit``).
    """

    limits: ServerLimits = app.state.limits
    guard: GuardSettings = app.state.guard
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        http=guarded_protocol(guard),
        timeout_keep_alive=max(1, round(limits.idle_timeout)),
        backlog=default_backlog(),
        lifespan="on",
    )
    return DrainingServer(config, app.state.drain, guard)


def serve(
    models: list[tuple[str | None, str]],
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    limits: ServerLimits | None = None,
    **model_options: Any,
) -> None:
    """Load ``models`` (``(name or None, path)``) and serve them until SIGTERM/SIGINT, then drain (see
    ``ServerLimits.drain_seconds``).

    Args:
        models: The GGUF files to serve and their API names (None: the file name without ``.gguf``).
        host: Interface to listen on. Defaults to loopback; anything else should use ``api_key``.
        port: TCP port. Defaults to 8000.
        api_key: Require ``Authorization: Bearer <api_key>``; checked before any model loads.
        limits: Request, connection, timeout and drain limits. Defaults to :class:`ServerLimits`.
        **model_options: ``ModelConfig`` options for every model (``long_text_mode``, ``n_workers``, ...).
    """
    from embellama.config import ModelConfig

    check_api_key(api_key)
    engine = EmbeddingEngine()
    try:
        for name, path in models:
            engine.load_model(ModelConfig(model_path=path, model_name=name, **model_options))
        server = build_server(create_app(engine, api_key=api_key, limits=limits), host=host, port=port)
    except BaseException:
        engine.close()
        raise
    # uvicorn re-raises the signal it stopped on once its shutdown is done; a graceful stop should exit 0
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        server.run()
    finally:
        signal.signal(signal.SIGTERM, previous)
