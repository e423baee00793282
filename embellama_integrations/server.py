"""An OpenAI-compatible embeddings (and rerank) server over the engine: ``embellama serve`` (extra ``server``).

Concurrent requests share decodes through the engine's micro-batching: a request's texts are queued as jobs and
awaited, never computed on the event loop. Endpoints:

- ``POST /v1/embeddings`` — OpenAI's schema: ``input`` (a string or a list of strings), ``model``,
  ``encoding_format`` (``float`` | ``base64``: little-endian float32), ``dimensions``; extra fields ``prompt_name``
  (the model's named prompt, e.g. ``"query"``) or ``prompt``.
- ``POST /v1/rerank`` — Jina/Cohere shape: ``query``, ``documents``, ``top_n``, ``return_documents``.
- ``GET /v1/models``, ``GET /health``, ``GET /metrics`` (Prometheus text format).

Errors use OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``; the server keeps serving after each.
The default host is loopback; ``--api-key`` (or ``$EMBELLAMA_API_KEY``) requires ``Authorization: Bearer KEY``.
"""

from __future__ import annotations

import base64
import hmac
import json
import signal
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from embellama.engine import EmbeddingEngine
from embellama.errors import ConfigurationError, EmbellamaError, InvalidInputError, ModelNotFoundError

__all__ = ["ServerLimits", "create_app"]

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)


@dataclass(frozen=True)
class ServerLimits:
    """What one request may ask, and how much work may wait before new requests are turned away."""

    max_inputs: int = 2048
    """Texts (or documents) per request; more answers 413."""
    max_body_bytes: int = 16 << 20
    """Request body size; larger answers 413."""
    max_queued_texts: int = 16384
    """Texts accepted but not yet answered, over all requests; beyond it a request answers 503 + Retry-After."""


class ApiError(Exception):
    """An error answered in OpenAI's shape."""

    def __init__(self, status: int, message: str, kind: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = status, message, kind, param, code

    def response(self) -> JSONResponse:
        """The JSON error response."""
        headers = {"Retry-After": "1"} if self.status == 503 else None
        body = {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status, headers=headers)


class _Histogram:
    """Running Prometheus histogram: bucket counts, sum and count (constant memory)."""

    def __init__(self, name: str, buckets: tuple[float, ...]) -> None:
        self.name, self.buckets = name, buckets
        self.counts = [0] * len(buckets)
        self.total = 0.0
        self.n = 0

    def observe(self, value: float) -> None:
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1
        self.total += value
        self.n += 1

    def render(self) -> list[str]:
        lines = [f"# TYPE {self.name} histogram"]
        lines += [f'{self.name}_bucket{{le="{b}"}} {c}' for b, c in zip(self.buckets, self.counts, strict=True)]
        lines += [f'{self.name}_bucket{{le="+Inf"}} {self.n}', f"{self.name}_sum {self.total}"]
        return [*lines, f"{self.name}_count {self.n}"]


@dataclass
class _Metrics:
    """Counters and histograms, rendered in Prometheus' text format."""

    requests: dict[tuple[str, int], int] = field(default_factory=lambda: defaultdict(int))
    errors: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    texts: int = 0
    tokens: int = 0
    latency: _Histogram = field(default_factory=lambda: _Histogram("embellama_request_seconds", LATENCY_BUCKETS))
    batch_sizes: _Histogram = field(default_factory=lambda: _Histogram("embellama_request_texts", BATCH_BUCKETS))
    queued: int = 0

    def render(self) -> str:
        lines = ["# TYPE embellama_requests_total counter"]
        lines += [
            f'embellama_requests_total{{path="{p}",status="{s}"}} {n}' for (p, s), n in sorted(self.requests.items())
        ]
        lines += ["# TYPE embellama_errors_total counter"]
        lines += [f'embellama_errors_total{{type="{t}"}} {n}' for t, n in sorted(self.errors.items())]
        lines += ["# TYPE embellama_texts_total counter", f"embellama_texts_total {self.texts}"]
        lines += ["# TYPE embellama_tokens_total counter", f"embellama_tokens_total {self.tokens}"]
        lines += ["# TYPE embellama_queued_texts gauge", f"embellama_queued_texts {self.queued}"]
        lines += self.latency.render() + self.batch_sizes.render()
        return "\n".join(lines) + "\n"


def create_app(
    engine: EmbeddingEngine,
    *,
    api_key: str | None = None,
    limits: ServerLimits | None = None,
    close_engine: bool = True,
) -> Starlette:
    """The ASGI app serving ``engine``'s loaded models (run it with uvicorn, or ``embellama serve``).

    Args:
        engine: An engine with the models to serve loaded (their names are the API's ``model`` ids).
        api_key: Require ``Authorization: Bearer <api_key>``. Defaults to none (serve loopback only then).
        limits: Request and queue limits. Defaults to :class:`ServerLimits`.
        close_engine: Close the engine when the server shuts down (after in-flight requests finish).
    """
    limits = limits or ServerLimits()
    metrics = _Metrics()

    def endpoint(
        handler: Callable[[Request], Awaitable[Response]], *, guarded: bool = True
    ) -> Callable[[Request], Awaitable[Response]]:
        async def run(request: Request) -> Response:
            started = time.perf_counter()
            try:
                supplied = request.headers.get("authorization", "")
                if api_key is not None and guarded and not hmac.compare_digest(supplied, f"Bearer {api_key}"):
                    raise ApiError(401, "missing or invalid API key", "authentication_error", code="invalid_api_key")
                response = await handler(request)
            except ApiError as exc:
                metrics.errors[exc.kind] += 1
                response = exc.response()
            except Exception as exc:  # never let one request take the server down
                metrics.errors["server_error"] += 1
                response = ApiError(500, f"{type(exc).__name__}: {exc}", "server_error").response()
            metrics.requests[(request.url.path, response.status_code)] += 1
            metrics.latency.observe(time.perf_counter() - started)
            return response

        return run

    async def body(request: Request) -> dict[str, Any]:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limits.max_body_bytes:
            raise ApiError(413, f"request body over {limits.max_body_bytes} bytes", "request_too_large")
        chunks, size = [], 0
        async for chunk in request.stream():  # counted while read: a chunked upload is refused before it ends
            size += len(chunk)
            if size > limits.max_body_bytes:
                raise ApiError(413, f"request body over {limits.max_body_bytes} bytes", "request_too_large")
            chunks.append(chunk)
        raw = b"".join(chunks)
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise ApiError(400, f"invalid JSON: {exc}", "invalid_request_error") from None
        if not isinstance(data, dict):
            raise ApiError(400, "the request body must be a JSON object", "invalid_request_error")
        return data

    def model_name(data: dict[str, Any], kind: str) -> str:
        name = data.get("model")
        served = {n: i for n, i in engine.models.items() if i.kind == kind}
        if name is None and len(served) == 1:
            return next(iter(served))
        if not isinstance(name, str) or name not in engine.models:
            raise ApiError(
                404, f"model {name!r} not found; served: {sorted(engine.models)}", "not_found_error",
                param="model", code="model_not_found",
            )  # fmt: skip
        if engine.models[name].kind != kind:
            raise ApiError(400, f"model {name!r} is a{'n embedding model' if kind == 'reranker' else ' reranker'}",
                           "invalid_request_error", param="model")  # fmt: skip
        return name

    def texts_of(value: Any, param: str) -> list[str]:
        if isinstance(value, str):
            return [value]
        if not isinstance(value, list) or not value:
            raise ApiError(400, f"'{param}' must be a string or a non-empty list of strings", "invalid_request_error",
                           param=param)  # fmt: skip
        if all(isinstance(v, int) for v in value) or all(isinstance(v, list) for v in value):
            raise ApiError(400, "token arrays are not supported: send text (LangChain's OpenAIEmbeddings: "
                           "check_embedding_ctx_length=False)", "invalid_request_error", param=param)  # fmt: skip
        for i, v in enumerate(value):
            if not isinstance(v, str):
                raise ApiError(400, f"'{param}[{i}]' must be a string, got {type(v).__name__}",
                               "invalid_request_error", param=f"{param}[{i}]")  # fmt: skip
        if len(value) > limits.max_inputs:
            raise ApiError(413, f"{len(value)} inputs in one request; the limit is {limits.max_inputs}",
                           "request_too_large", param=param)  # fmt: skip
        return value

    @asynccontextmanager
    async def queued(n: int) -> Any:
        if metrics.queued + n > limits.max_queued_texts:
            raise ApiError(503, f"server busy: {metrics.queued} texts queued", "server_overloaded", code="overloaded")
        metrics.queued += n
        try:
            yield
        finally:
            metrics.queued -= n

    def invalid(exc: InvalidInputError, param: str) -> ApiError:
        where = f"{param}[{exc.index}]" if exc.index is not None else param
        return ApiError(400, f"{where}: {exc.reason}", "invalid_request_error", param=where, code="invalid_input")

    async def embeddings(request: Request) -> Response:
        data = await body(request)
        name = model_name(data, "embedding")
        texts = texts_of(data.get("input"), "input")
        fmt = data.get("encoding_format", "float")
        if fmt not in ("float", "base64"):
            raise ApiError(400, "encoding_format must be 'float' or 'base64'", "invalid_request_error",
                           param="encoding_format")  # fmt: skip
        info = engine.model_info(name)
        dims = data.get("dimensions")
        if dims is not None and (
            isinstance(dims, bool) or not isinstance(dims, int) or not 1 <= dims <= info.dimensions
        ):
            raise ApiError(400, f"dimensions must be an integer in 1..{info.dimensions}", "invalid_request_error",
                           param="dimensions")  # fmt: skip
        async with queued(len(texts)):
            try:
                rows, tokens = await engine.aembed_with_usage(
                    name, texts, prompt=data.get("prompt"), prompt_name=data.get("prompt_name")
                )
            except InvalidInputError as exc:
                raise invalid(exc, "input") from None
            except ConfigurationError as exc:
                raise ApiError(400, str(exc), "invalid_request_error") from None
        if dims is not None and dims < rows.shape[1]:
            rows = rows[:, :dims]
            if info.normalize:
                rows = rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)
        metrics.texts += len(texts)
        metrics.tokens += tokens
        metrics.batch_sizes.observe(len(texts))
        items = []
        for i, row in enumerate(rows):
            vector: Any = (
                base64.b64encode(np.ascontiguousarray(row, dtype="<f4").tobytes()).decode("ascii")
                if fmt == "base64"
                else row.tolist()
            )
            items.append({"object": "embedding", "index": i, "embedding": vector})
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        return JSONResponse({"object": "list", "data": items, "model": name, "usage": usage})

    async def rerank(request: Request) -> Response:
        data = await body(request)
        name = model_name(data, "reranker")
        query = data.get("query")
        if not isinstance(query, str):
            raise ApiError(400, "'query' must be a string", "invalid_request_error", param="query")
        documents = texts_of(data.get("documents"), "documents")
        top_n = data.get("top_n")
        async with queued(len(documents)):
            try:
                ranking = await engine.arerank(name, query, documents, top_n=top_n)
            except InvalidInputError as exc:
                raise invalid(exc, "documents") from None
            except ConfigurationError as exc:
                raise ApiError(400, str(exc), "invalid_request_error") from None
        metrics.texts += len(documents)
        metrics.batch_sizes.observe(len(documents))
        results = []
        for ranked in ranking.top:
            item: dict[str, Any] = {"index": ranked.index, "relevance_score": ranked.score}
            if data.get("return_documents", False):
                item["document"] = {"text": ranked.document}
            results.append(item)
        return JSONResponse(
            {"object": "list", "model": name, "results": results, "usage": {"documents": len(documents)}}
        )

    async def models(request: Request) -> Response:
        data = [
            {"id": name, "object": "model", "owned_by": "embellama", "embellama": {"kind": info.kind,
             "dimensions": info.dimensions, "max_tokens": info.max_tokens, "family": info.family}}
            for name, info in sorted(engine.models.items())
        ]  # fmt: skip
        return JSONResponse({"object": "list", "data": data})

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "models": sorted(engine.models)})

    async def prometheus(request: Request) -> Response:
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    @asynccontextmanager
    async def lifespan(app: Starlette) -> Any:
        yield
        if close_engine:
            await engine.aclose()

    routes = [
        Route("/v1/embeddings", endpoint(embeddings), methods=["POST"]),
        Route("/embeddings", endpoint(embeddings), methods=["POST"]),
        Route("/v1/rerank", endpoint(rerank), methods=["POST"]),
        Route("/v1/models", endpoint(models), methods=["GET"]),
        Route("/health", endpoint(health, guarded=False), methods=["GET"]),  # liveness probes carry no key
        Route("/metrics", endpoint(prometheus), methods=["GET"]),
    ]

    async def http_error(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 500)
        kind = {404: "not_found_error", 405: "invalid_request_error"}.get(status, "server_error")
        return ApiError(status, f"{request.method} {request.url.path}: {getattr(exc, 'detail', exc)}", kind).response()

    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={404: http_error, 405: http_error})
    app.state.metrics = metrics
    return app


def known_errors() -> tuple[type[Exception], ...]:
    """Engine errors the server maps to API errors (documentation aid)."""
    return (InvalidInputError, ConfigurationError, ModelNotFoundError, EmbellamaError)


def serve(
    models: list[tuple[str | None, str]],
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    limits: ServerLimits | None = None,
    **model_options: Any,
) -> None:
    """Load ``models`` (``(name or None, path)``) and serve them until SIGTERM/SIGINT (in-flight requests finish).

    Args:
        models: The GGUF files to serve and their API names (None: the file name without ``.gguf``).
        host: Interface to listen on. Defaults to loopback; anything else should use ``api_key``.
        port: TCP port.
        api_key: Require ``Authorization: Bearer <api_key>``.
        limits: Request and queue limits.
        **model_options: ``ModelConfig`` options for every model (``truncate``, ``n_workers``, ...).
    """
    import uvicorn

    from embellama.config import ModelConfig

    engine = EmbeddingEngine()
    for name, path in models:
        engine.load_model(ModelConfig(model_path=path, model_name=name, **model_options))
    app = create_app(engine, api_key=api_key, limits=limits)
    config = uvicorn.Config(
        app, host=host, port=port, log_level="info", timeout_graceful_shutdown=30, timeout_keep_alive=30
    )
    server = uvicorn.Server(config)
    # uvicorn re-raises the signal it stopped on once its shutdown is done; a graceful stop should exit 0
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        server.run()
    finally:
        signal.signal(signal.SIGTERM, previous)
