"""The routes and their handlers: ``POST /v1/embeddings`` (and ``/embeddings``), ``POST /v1/rerank``,
``GET /v1/models``, ``GET /health``, ``GET /metrics``.

A handler parses its body (:mod:`embellama.server.schemas`), holds its texts' place in the queue while the engine
computes them (never on the event loop), and answers (:mod:`embellama.server.responses`); every route is wrapped by
:func:`~embellama.server.endpoint.endpoint` (API key, drain deadline, errors, metrics).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from embellama.engine.engine import EmbeddingEngine
from embellama.errors import EmbellamaError, EngineClosedError, ModelNotFoundError
from embellama.server.endpoint import Handler, endpoint
from embellama.server.errors import ApiError, engine_error
from embellama.server.guard import Drain
from embellama.server.limits import ServerLimits
from embellama.server.metrics import Metrics
from embellama.server.responses import embeddings_body, health_body, models_body, rerank_body
from embellama.server.schemas import check_tokens, parse_embeddings, parse_rerank, read_json
from embellama.types import ModelHealth

__all__ = ["Routes"]


class Routes:
    """The handlers of one app: the engine, the limits, the metrics and the drain they share.

    Args:
        engine: The engine whose loaded models are served.
        limits: The server's limits.
        metrics: Where requests and texts are counted.
        drain: The app's graceful shutdown (``/health`` reports it).
    """

    def __init__(self, engine: EmbeddingEngine, limits: ServerLimits, metrics: Metrics, drain: Drain) -> None:
        self.engine, self.limits, self.metrics, self.drain = engine, limits, metrics, drain

    def table(self, key: bytes | None) -> list[Route]:
        """Starlette's routes, each behind :func:`~embellama.server.endpoint.endpoint` (``/health`` without the
        API key ``key``: probes carry none)."""

        def route(path: str, handler: Handler, method: str, *, guarded: bool = True) -> Route:
            return Route(path, endpoint(handler, self.metrics, self.drain, key if guarded else None), methods=[method])

        return [
            route("/v1/embeddings", self.embeddings, "POST"),
            route("/embeddings", self.embeddings, "POST"),
            route("/v1/rerank", self.rerank, "POST"),
            route("/v1/models", self.models, "GET"),
            route("/health", self.health, "GET", guarded=False),
            route("/metrics", self.prometheus, "GET"),
        ]

    @asynccontextmanager
    async def queued(self, n: int) -> AsyncIterator[None]:
        """Hold ``n`` texts' place among ``max_queued_texts`` (503 ``overloaded`` when they do not fit)."""
        metrics = self.metrics
        if metrics.queued + n > self.limits.max_queued_texts:
            raise ApiError(503, f"server busy: {metrics.queued} texts queued", "server_overloaded", code="overloaded")
        metrics.queued += n
        try:
            yield
        finally:
            metrics.queued -= n

    async def _body(self, request: Request) -> dict[str, Any]:
        return await read_json(request.stream(), request.headers.get("content-length"), self.limits)

    async def embeddings(self, request: Request) -> Response:
        """``POST /v1/embeddings``: OpenAI's embeddings."""
        engine = self.engine
        req = parse_embeddings(engine.models, await self._body(request), self.limits)
        async with self.queued(len(req.texts)):
            try:
                await check_tokens(engine, req, self.limits)
                rows, tokens = await engine.aembed_with_usage(
                    req.model, req.texts, prompt=req.prompt, prompt_name=req.prompt_name
                )
            except EmbellamaError as exc:
                raise engine_error(exc, "input") from None
        self.metrics.served(len(req.texts), tokens)
        return JSONResponse(embeddings_body(rows, tokens, req, engine.model_info(req.model).normalize))

    async def rerank(self, request: Request) -> Response:
        """``POST /v1/rerank``: the documents scored against the query (Jina/Cohere shape)."""
        req = parse_rerank(self.engine.models, await self._body(request), self.limits)
        async with self.queued(len(req.documents)):
            try:
                ranking = await self.engine.arerank(req.model, req.query, req.documents, top_n=req.top_n)
            except EmbellamaError as exc:
                raise engine_error(exc, "documents") from None
        self.metrics.served(len(req.documents))
        return JSONResponse(rerank_body(ranking, req))

    async def models(self, request: Request) -> Response:
        """``GET /v1/models``: the served models."""
        return JSONResponse(models_body(self.engine.models))

    async def health(self, request: Request) -> Response:
        """``GET /health``: per-model worker state; 503 while a model has no live worker (its restart is queued) or
        while draining."""
        healths: dict[str, ModelHealth] = {}
        for name in sorted(self.engine.models):
            try:
                healths[name] = self.engine.model_health(name, revive=True)
            except (ModelNotFoundError, EngineClosedError):  # unloaded meanwhile
                continue
        body, status = health_body(healths, self.drain.draining)
        return JSONResponse(body, status_code=status)

    async def prometheus(self, request: Request) -> Response:
        """``GET /metrics``: Prometheus' text format (see :mod:`embellama.server.metrics`)."""
        body, content_type = self.metrics.render()
        return Response(body, media_type=content_type)
