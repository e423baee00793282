"""What every request goes through around its handler: the API key, the drain deadline, errors answered in
OpenAI's shape (never an exception out of the app), and the request metrics."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from embellama.server.auth import check_authorization
from embellama.server.errors import ApiError
from embellama.server.guard import Drain, DrainTimeout
from embellama.server.metrics import Metrics

__all__ = ["Handler", "endpoint"]

Handler = Callable[[Request], Awaitable[Response]]
"""A route's handler (what Starlette calls)."""


def endpoint(handler: Handler, metrics: Metrics, drain: Drain, key: bytes | None) -> Handler:
    """``handler`` behind the API key (``key``: what :func:`~embellama.server.auth.check_api_key` made; None: no
    key), run within the drain deadline, with every error answered in OpenAI's shape and counted."""

    async def handle(request: Request) -> Response:
        if key is not None:
            check_authorization(request.headers.get("authorization", ""), key)
        return await handler(request)

    async def run(request: Request) -> Response:
        started = time.perf_counter()
        try:
            response = await drain.run(lambda: handle(request))
        except Exception as exc:  # never let one request take the server down
            response = _error_response(exc, metrics)
        if drain.draining:
            response.headers["connection"] = "close"
        metrics.requests[(request.url.path, response.status_code)] += 1
        metrics.latency.observe(time.perf_counter() - started)
        return response

    return run


def _error_response(exc: Exception, metrics: Metrics) -> Response:
    """The answer to a request whose handler raised ``exc``, counted by error type (and as dropped at the drain
    deadline)."""
    counted_as = None
    if isinstance(exc, ApiError):
        error = exc
    elif isinstance(exc, DrainTimeout):
        metrics.dropped += 1
        error = ApiError(503, str(exc), "server_shutting_down", code="shutting_down")
    elif isinstance(exc, ClientDisconnect):
        error = ApiError(400, "the client closed the connection before its body ended", "invalid_request_error",
                         code="client_disconnected")  # fmt: skip
        counted_as = "client_disconnected"
    else:
        error = ApiError(500, f"{type(exc).__name__}: {exc}", "server_error")
    metrics.errors[counted_as or error.kind] += 1
    return error.response()
