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
"""

from __future__ import annotations

import base64
import hmac
import json
import signal
import time
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import uvicorn
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from embellama.engine.engine import EmbeddingEngine
from embellama.errors import (
    ConfigurationError,
    EmbellamaError,
    EngineClosedError,
    InvalidInputError,
    ModelNotFoundError,
)
from embellama.server.errors import ApiError
from embellama.server.guard import (
    Drain,
    DrainingServer,
    DrainTimeout,
    GuardSettings,
    default_backlog,
    default_max_connections,
    guarded_protocol,
)
from embellama.server.metrics import Metrics
from embellama.types import ModelInfo

__all__ = ["ServerLimits", "build_server", "check_api_key", "create_app", "serve"]

_SPECIAL_TOKENS = 8
"""More special tokens than any tokenizer adds around one input (so ``bytes + 8`` bounds an input's tokens)."""


@dataclass(frozen=True)
class ServerLimits:
    """What one request may ask, how long clients may take, and how many connections and how much work may wait."""

    max_inputs: int = 2048
    """Texts (or documents) per request; more answers 413."""
    max_body_bytes: int = 16 << 20
    """Request body size; larger answers 413. A ``prompt`` (or a rerank ``query``) counts once per input: a request
    whose inputs plus ``len(prompt) x inputs`` bytes exceed it answers 413 too."""
    max_request_tokens: int = 2048 * 256
    """Tokens one request may make the model process (each input with its prompt; an over-long input counts with
    the tokens it was sent with); more answers 413. Requests whose UTF-8 size proves them under it are not counted
    first; others are tokenized once to check (far cheaper than embedding them)."""
    max_queued_texts: int = 16384
    """Texts accepted but not yet answered, over all requests; beyond it a request answers 503 + Retry-After."""
    max_connections: int = field(default_factory=default_max_connections)
    """Open connections; past it the longest-idle one is closed, or a request answers 503 when all are busy.
    Defaults to the open-file limit less two accept bursts and a reserve (640 of 1,024; see
    :func:`~embellama.server.guard.default_max_connections`)."""
    header_timeout: float = 10.0
    """Seconds a client has to send a request's line and headers; then 408 and close (slowloris)."""
    body_timeout: float = 60.0
    """Seconds a client has to send a request's body once its headers are in; then 408 and close."""
    idle_timeout: float = 30.0
    """Seconds an idle keep-alive connection stays open."""
    drain_seconds: float = 30.0
    """At SIGTERM/SIGINT: seconds requests already read get to finish; the ones still running are answered 503
    (``server_shutting_down``), logged and counted in ``embellama_dropped_requests_total``."""

    def __post_init__(self) -> None:
        for name in ("max_inputs", "max_body_bytes", "max_request_tokens", "max_queued_texts", "max_connections"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigurationError(f"ServerLimits.{name} must be an integer >= 1, got {value!r}")
        for name in ("header_timeout", "body_timeout", "idle_timeout", "drain_seconds"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ConfigurationError(f"ServerLimits.{name} must be a number of seconds >= 0, got {value!r}")


def check_api_key(api_key: str | None) -> bytes | None:
    """The bearer header an API key requires, as bytes; refuses keys HTTP clients cannot send.

    Raises:
        ConfigurationError: the key is empty or has characters other than printable ASCII.
    """
    if api_key is None:
        return None
    if not api_key or not all(0x21 <= ord(c) <= 0x7E for c in api_key):
        raise ConfigurationError(
            "the API key must be non-empty printable ASCII without spaces (HTTP clients send header values as "
            "ASCII; a key with other characters could never match)"
        )
    return b"Bearer " + api_key.encode("ascii")


# ------------------------------------------------------------------------------------------- request validation


def _invalid(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, "invalid_request_error", param=param, code=code)


def _optional_str(data: dict[str, Any], key: str) -> str | None:
    value = data.get(key)
    if value is not None and not isinstance(value, str):
        raise _invalid(f"'{key}' must be a string, got {type(value).__name__}", key)
    return value


def _utf8_size(text: str, param: str) -> int:
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise _invalid(f"{param}: not valid Unicode: {exc.reason} at character {exc.start}", param,
                       "invalid_input") from None  # fmt: skip


def _texts(value: Any, param: str, limits: ServerLimits) -> list[str]:
    """``input`` / ``documents``: a string or a non-empty list of strings, at most ``max_inputs``."""
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not value:
        raise _invalid(f"'{param}' must be a string or a non-empty list of strings", param)
    if all(isinstance(v, int) for v in value) or all(isinstance(v, list) for v in value):
        raise _invalid("token arrays are not supported: send text (LangChain's OpenAIEmbeddings: "
                       "check_embedding_ctx_length=False)", param)  # fmt: skip
    for i, v in enumerate(value):
        if not isinstance(v, str):
            raise _invalid(f"'{param}[{i}]' must be a string, got {type(v).__name__}", f"{param}[{i}]")
    if len(value) > limits.max_inputs:
        raise ApiError(413, f"{len(value)} inputs in one request; the limit is {limits.max_inputs}",
                       "request_too_large", param=param)  # fmt: skip
    return value


def _model_name(engine: EmbeddingEngine, data: dict[str, Any], kind: str) -> str:
    name = data.get("model")
    if name is not None and not isinstance(name, str):
        raise _invalid(f"'model' must be a string, got {type(name).__name__}", "model")
    served = {n: i for n, i in engine.models.items() if i.kind == kind}
    if name is None and len(served) == 1:
        return next(iter(served))
    if name is None or name not in engine.models:
        raise ApiError(404, f"model {name!r} not found; served: {sorted(engine.models)}", "not_found_error",
                       param="model", code="model_not_found")  # fmt: skip
    if engine.models[name].kind != kind:
        raise _invalid(f"model {name!r} is a{'n embedding model' if kind == 'reranker' else ' reranker'}", "model")
    return name


@dataclass(frozen=True)
class EmbeddingsRequest:
    """A validated ``POST /v1/embeddings`` body."""

    model: str
    texts: list[str]
    encoding_format: str
    dimensions: int | None
    prompt: str | None
    prompt_name: str | None
    prefix: str
    """What the engine puts in front of every input (``prompt``, or the model's prompt named ``prompt_name``)."""


def parse_embeddings(engine: EmbeddingEngine, data: dict[str, Any], limits: ServerLimits) -> EmbeddingsRequest:
    """Check every field's type and range (400/404/413 as :class:`ApiError`)."""
    name = _model_name(engine, data, "embedding")
    texts = _texts(data.get("input"), "input", limits)
    fmt = data.get("encoding_format")
    if fmt is None:
        fmt = "float"
    if fmt not in ("float", "base64"):
        raise _invalid("encoding_format must be 'float' or 'base64'", "encoding_format")
    info = engine.model_info(name)
    dims = data.get("dimensions")
    if dims is not None and (isinstance(dims, bool) or not isinstance(dims, int) or not 1 <= dims <= info.dimensions):
        raise _invalid(f"dimensions must be an integer in 1..{info.dimensions}", "dimensions")
    _optional_str(data, "user")
    prompt, prompt_name = _optional_str(data, "prompt"), _optional_str(data, "prompt_name")
    if prompt is not None:
        prefix = prompt
    elif prompt_name is not None:
        if prompt_name not in info.prompts:
            raise _invalid(f"model {name!r} has no prompt named {prompt_name!r}; its prompts: {sorted(info.prompts)}",
                           "prompt_name")  # fmt: skip
        prefix = info.prompts[prompt_name]
    else:
        prefix = ""
    return EmbeddingsRequest(name, texts, fmt, dims, prompt, prompt_name, prefix)


@dataclass(frozen=True)
class RerankRequest:
    """A validated ``POST /v1/rerank`` body."""

    model: str
    query: str
    documents: list[str]
    top_n: int | None
    return_documents: bool


def parse_rerank(engine: EmbeddingEngine, data: dict[str, Any], limits: ServerLimits) -> RerankRequest:
    """Check every field's type and range (400/404/413 as :class:`ApiError`)."""
    name = _model_name(engine, data, "reranker")
    query = data.get("query")
    if not isinstance(query, str):
        raise _invalid("'query' must be a string", "query")
    documents = _texts(data.get("documents"), "documents", limits)
    top_n = data.get("top_n")
    if top_n is not None and (isinstance(top_n, bool) or not isinstance(top_n, int) or top_n < 1):
        raise _invalid(f"top_n must be an integer >= 1 or null, got {top_n!r}", "top_n")
    return_documents = data.get("return_documents")
    if return_documents is not None and not isinstance(return_documents, bool):
        raise _invalid("'return_documents' must be a boolean", "return_documents")
    return RerankRequest(name, query, documents, top_n, bool(return_documents))


def _check_size(texts: list[str], param: str, prefix: str, prefix_param: str, limits: ServerLimits) -> int:
    """Refuse a request whose inputs, with the prefix counted once per input, exceed ``max_body_bytes`` (413);
    return that expanded size in bytes."""
    expanded = sum(_utf8_size(t, f"{param}[{i}]") for i, t in enumerate(texts))
    expanded += _utf8_size(prefix, prefix_param) * len(texts)
    if expanded > limits.max_body_bytes:
        raise ApiError(413, f"the request expands to {expanded} bytes with its {prefix_param} counted once per input; "
                       f"the limit is {limits.max_body_bytes} bytes", "request_too_large",
                       param=prefix_param if prefix else param)  # fmt: skip
    return expanded


def _token_bound(expanded: int, n_inputs: int, info: ModelInfo) -> int:
    """An upper bound of the tokens the model processes: no tokenizer makes more tokens than UTF-8 bytes (plus the
    special tokens), and no input is processed past the model's limit."""
    return min(expanded + _SPECIAL_TOKENS * n_inputs, n_inputs * info.max_tokens)


def _too_many_tokens(tokens: int, limits: ServerLimits, exact: bool) -> ApiError:
    what = f"{tokens} tokens" if exact else f"up to {tokens} tokens (its UTF-8 size)"
    return ApiError(413, f"the request has {what}; the limit is {limits.max_request_tokens} tokens per request "
                    "(max_request_tokens): send fewer or shorter inputs", "request_too_large",
                    code="too_many_tokens")  # fmt: skip


async def _check_tokens(engine: EmbeddingEngine, req: EmbeddingsRequest, expanded: int, limits: ServerLimits) -> None:
    """The prompt must fit the model (400) and the request ``max_request_tokens`` (413). Only what its UTF-8 size
    cannot prove small is tokenized here (a long prompt, a large request); everything else is tokenized once, when
    embedded."""
    info = engine.model_info(req.model)
    kwargs = {"prompt": req.prompt, "prompt_name": req.prompt_name}
    if req.prefix and _utf8_size(req.prefix, "prompt") + _SPECIAL_TOKENS > info.max_tokens:
        param = "prompt" if req.prompt is not None else "prompt_name"
        try:
            alone = await engine.acount_tokens(req.model, [""], **kwargs)
        except InvalidInputError as exc:
            raise _invalid(f"{param}: {exc.reason}", param, "invalid_input") from None
        if alone > info.max_tokens:
            raise _invalid(f"{param}: the prompt has {alone} tokens (with the model's special tokens); the model's "
                           f"limit is {info.max_tokens} tokens per input", param, "invalid_input")  # fmt: skip
    if _token_bound(expanded, len(req.texts), info) > limits.max_request_tokens:
        try:
            tokens = await engine.acount_tokens(req.model, req.texts, **kwargs)
        except InvalidInputError as exc:
            raise _invalid_input(exc, "input") from None
        if tokens > limits.max_request_tokens:
            raise _too_many_tokens(tokens, limits, exact=True)


def _invalid_input(exc: InvalidInputError, param: str) -> ApiError:
    where = f"{param}[{exc.index}]" if exc.index is not None else param
    return _invalid(f"{where}: {exc.reason}", where, "invalid_input")


def _engine_error(exc: EmbellamaError, param: str) -> ApiError:
    """An engine error as an API error: the client's fault is a 4xx; a shutting-down engine a 503."""
    if isinstance(exc, InvalidInputError):
        return _invalid_input(exc, param)
    if isinstance(exc, ConfigurationError):
        return _invalid(str(exc))
    if isinstance(exc, EngineClosedError):
        return ApiError(503, f"the server is shutting down: {exc}", "server_shutting_down", code="shutting_down")
    raise exc


def _vectors(rows: np.ndarray, req: EmbeddingsRequest, info: ModelInfo) -> list[dict[str, Any]]:
    if req.dimensions is not None and req.dimensions < rows.shape[1]:
        rows = rows[:, : req.dimensions]
        if info.normalize:
            rows = rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)
    items = []
    for i, row in enumerate(rows):
        vector: Any = (
            base64.b64encode(np.ascontiguousarray(row, dtype="<f4").tobytes()).decode("ascii")
            if req.encoding_format == "base64"
            else row.tolist()
        )
        items.append({"object": "embedding", "index": i, "embedding": vector})
    return items


async def read_json(request: Request, limits: ServerLimits) -> dict[str, Any]:
    """The request's JSON object, read up to ``max_body_bytes`` (413 past it, 400 if not a JSON object)."""
    too_large = ApiError(413, f"request body over {limits.max_body_bytes} bytes", "request_too_large")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limits.max_body_bytes:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():  # counted while read: a chunked upload is refused before it ends
        size += len(chunk)
        if size > limits.max_body_bytes:
            raise too_large
        chunks.append(chunk)
    try:
        data = json.loads(b"".join(chunks))
    except ValueError as exc:
        raise _invalid(f"invalid JSON: {exc}") from None
    except RecursionError:
        raise _invalid("invalid JSON: nested too deeply") from None
    if not isinstance(data, dict):
        raise _invalid("the request body must be a JSON object")
    return data


# ------------------------------------------------------------------------------------------------------ the app


class _Routes:
    """The handlers of one app: the engine, the limits, the metrics and the drain they share."""

    def __init__(self, engine: EmbeddingEngine, limits: ServerLimits, metrics: Metrics, drain: Drain) -> None:
        self.engine, self.limits, self.metrics, self.drain = engine, limits, metrics, drain

    @asynccontextmanager
    async def queued(self, n: int) -> Any:
        metrics = self.metrics
        if metrics.queued + n > self.limits.max_queued_texts:
            raise ApiError(503, f"server busy: {metrics.queued} texts queued", "server_overloaded", code="overloaded")
        metrics.queued += n
        try:
            yield
        finally:
            metrics.queued -= n

    async def embeddings(self, request: Request) -> Response:
        engine, limits = self.engine, self.limits
        req = parse_embeddings(engine, await read_json(request, limits), limits)
        expanded = _check_size(req.texts, "input", req.prefix, "prompt", limits)
        async with self.queued(len(req.texts)):
            try:
                await _check_tokens(engine, req, expanded, limits)
                rows, tokens = await engine.aembed_with_usage(
                    req.model, req.texts, prompt=req.prompt, prompt_name=req.prompt_name
                )
            except EmbellamaError as exc:
                raise _engine_error(exc, "input") from None
        self.metrics.texts += len(req.texts)
        self.metrics.tokens += tokens
        self.metrics.batch_sizes.observe(len(req.texts))
        items = _vectors(rows, req, engine.model_info(req.model))
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        return JSONResponse({"object": "list", "data": items, "model": req.model, "usage": usage})

    async def rerank(self, request: Request) -> Response:
        engine, limits = self.engine, self.limits
        req = parse_rerank(engine, await read_json(request, limits), limits)
        expanded = _check_size(req.documents, "documents", req.query, "query", limits)
        bound = _token_bound(expanded, len(req.documents), engine.model_info(req.model))
        if bound > limits.max_request_tokens:
            raise _too_many_tokens(bound, limits, exact=False)
        async with self.queued(len(req.documents)):
            try:
                ranking = await engine.arerank(req.model, req.query, req.documents, top_n=req.top_n)
            except EmbellamaError as exc:
                raise _engine_error(exc, "documents") from None
        self.metrics.texts += len(req.documents)
        self.metrics.batch_sizes.observe(len(req.documents))
        results = []
        for ranked in ranking.top:
            item: dict[str, Any] = {"index": ranked.index, "relevance_score": ranked.score}
            if req.return_documents:
                item["document"] = {"text": ranked.document}
            results.append(item)
        usage = {"documents": len(req.documents)}
        return JSONResponse({"object": "list", "model": req.model, "results": results, "usage": usage})

    async def models(self, request: Request) -> Response:
        data = [
            {"id": name, "object": "model", "owned_by": "embellama", "embellama": {"kind": info.kind,
             "dimensions": info.dimensions, "max_tokens": info.max_tokens, "family": info.family}}
            for name, info in sorted(self.engine.models.items())
        ]  # fmt: skip
        return JSONResponse({"object": "list", "data": data})

    async def health(self, request: Request) -> Response:
        """Per-model worker state; 503 while a model has no live worker (its restart is queued) or while draining."""
        models: dict[str, Any] = {}
        down = []
        for name in sorted(self.engine.models):
            try:
                health = self.engine.model_health(name, revive=True)
            except (ModelNotFoundError, EngineClosedError):  # unloaded meanwhile
                continue
            models[name] = {
                "workers": len(health.workers),
                "live": health.live,
                "crashes": health.crashes,
                "restarts": health.restarts,
                "last_error": health.last_error,
                "pids": [w.pid for w in health.workers],
            }
            if health.live == 0:
                down.append(name)
        status = "draining" if self.drain.draining else "unavailable" if down else "ok"
        body = {"status": status, "models": models}
        if down:
            body["down"] = down
        return JSONResponse(body, status_code=200 if status == "ok" else 503)

    async def prometheus(self, request: Request) -> Response:
        body, content_type = self.metrics.render()
        return Response(body, media_type=content_type)


def _endpoint(
    handler: Callable[[Request], Awaitable[Response]], routes: _Routes, key: bytes | None, *, guarded: bool = True
) -> Callable[[Request], Awaitable[Response]]:
    """Wrap a handler: API key, drain deadline, errors in OpenAI's shape, metrics."""
    metrics, drain = routes.metrics, routes.drain

    async def handle(request: Request) -> Response:
        if key is not None and guarded:
            supplied = request.headers.get("authorization", "").encode("latin-1")  # the header's bytes as sent
            if not hmac.compare_digest(supplied, key):
                raise ApiError(401, "missing or invalid API key", "authentication_error", code="invalid_api_key")
        return await handler(request)

    async def run(request: Request) -> Response:
        started = time.perf_counter()
        try:
            response = await drain.run(lambda: handle(request))
        except ApiError as exc:
            metrics.errors[exc.kind] += 1
            response = exc.response()
        except DrainTimeout as exc:
            metrics.dropped += 1
            metrics.errors["server_shutting_down"] += 1
            response = ApiError(503, str(exc), "server_shutting_down", code="shutting_down").response()
        except ClientDisconnect:
            metrics.errors["client_disconnected"] += 1
            response = ApiError(400, "the client closed the connection before its body ended", "invalid_request_error",
                                code="client_disconnected").response()  # fmt: skip
        except Exception as exc:  # never let one request take the server down
            metrics.errors["server_error"] += 1
            response = ApiError(500, f"{type(exc).__name__}: {exc}", "server_error").response()
        if drain.draining:
            response.headers["connection"] = "close"
        metrics.requests[(request.url.path, response.status_code)] += 1
        metrics.latency.observe(time.perf_counter() - started)
        return response

    return run


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
    metrics = Metrics()
    drain = Drain(limits.drain_seconds)
    guard = GuardSettings(limits.header_timeout, limits.body_timeout, limits.max_connections)
    metrics.connections = lambda: {
        "open": float(guard.open),
        "timed_out": float(guard.timed_out),
        "evicted": float(guard.evicted),
        "refused": float(guard.refused),
    }
    routes = _Routes(engine, limits, metrics, drain)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> Any:
        yield
        if close_engine:
            await engine.aclose()

    def wrap(handler: Callable[[Request], Awaitable[Response]], guarded: bool = True) -> Any:
        return _endpoint(handler, routes, key, guarded=guarded)

    app = Starlette(
        routes=[
            Route("/v1/embeddings", wrap(routes.embeddings), methods=["POST"]),
            Route("/embeddings", wrap(routes.embeddings), methods=["POST"]),
            Route("/v1/rerank", wrap(routes.rerank), methods=["POST"]),
            Route("/v1/models", wrap(routes.models), methods=["GET"]),
            Route("/health", wrap(routes.health, guarded=False), methods=["GET"]),  # probes carry no key
            Route("/metrics", wrap(routes.prometheus), methods=["GET"]),
        ],
        lifespan=lifespan,
        exception_handlers={404: _http_error, 405: _http_error},
    )
    app.state.metrics, app.state.limits, app.state.drain, app.state.guard = metrics, limits, drain, guard
    return app


async def _http_error(request: Request, exc: Exception) -> Response:
    status = getattr(exc, "status_code", 500)
    kind = {404: "not_found_error", 405: "invalid_request_error"}.get(status, "server_error")
    return ApiError(status, f"{request.method} {request.url.path}: {getattr(exc, 'detail', exc)}", kind).response()


def known_errors() -> tuple[type[Exception], ...]:
    """Engine errors the server maps to API errors (documentation aid)."""
    return (InvalidInputError, ConfigurationError, ModelNotFoundError, EngineClosedError, EmbellamaError)


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
