"""The server's errors in OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``, and how engine errors
map to them.

Used by the request schemas and the routes (:class:`ApiError` and its constructors), and by the connection guard,
which answers below the ASGI app (a header timeout, a connection refused at the cap) with
:func:`raw_error_response`.
"""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from embellama.errors import ConfigurationError, EmbellamaError, EngineClosedError, InvalidInputError

__all__ = [
    "ApiError",
    "engine_error",
    "error_body",
    "http_error",
    "invalid_input",
    "invalid_request",
    "raw_error_response",
    "too_large",
]


def error_body(message: str, kind: str, *, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """OpenAI's error object."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


class ApiError(Exception):
    """An error answered in OpenAI's shape (503s carry ``Retry-After: 1``)."""

    def __init__(self, status: int, message: str, kind: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = status, message, kind, param, code

    def response(self) -> JSONResponse:
        """The JSON error response."""
        headers = {"Retry-After": "1"} if self.status == 503 else None
        body = error_body(self.message, self.kind, param=self.param, code=self.code)
        return JSONResponse(body, status_code=self.status, headers=headers)


def invalid_request(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    """A 400 ``invalid_request_error``: the body is malformed, ``param`` names the field."""
    return ApiError(400, message, "invalid_request_error", param=param, code=code)


def too_large(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    """A 413 ``request_too_large``: the request asks more than a :class:`~embellama.server.limits.ServerLimits`
    field allows."""
    return ApiError(413, message, "request_too_large", param=param, code=code)


def invalid_input(exc: InvalidInputError, param: str) -> ApiError:
    """An input the engine refused, as a 400 naming it (``input[3]``, or ``param`` when it names no index)."""
    where = f"{param}[{exc.index}]" if exc.index is not None else param
    return invalid_request(f"{where}: {exc.reason}", where, "invalid_input")


def engine_error(exc: EmbellamaError, param: str) -> ApiError:
    """An engine error as an API error: the client's fault is a 4xx; a shutting-down engine a 503.

    Raises:
        EmbellamaError: ``exc`` itself when it is none of these (the server's fault: the endpoint answers 500).
    """
    if isinstance(exc, InvalidInputError):
        return invalid_input(exc, param)
    if isinstance(exc, ConfigurationError):
        return invalid_request(str(exc))
    if isinstance(exc, EngineClosedError):
        return ApiError(503, f"the server is shutting down: {exc}", "server_shutting_down", code="shutting_down")
    raise exc


async def http_error(request: Request, exc: Exception) -> Response:
    """Starlette's 404 (no such route) and 405 (wrong method) in OpenAI's shape."""
    status = getattr(exc, "status_code", 500)
    kind = {404: "not_found_error", 405: "invalid_request_error"}.get(status, "server_error")
    return ApiError(status, f"{request.method} {request.url.path}: {getattr(exc, 'detail', exc)}", kind).response()


def raw_error_response(status: int, message: str, kind: str, code: str) -> bytes:
    """A complete HTTP/1.1 error response with ``Connection: close``, for writing straight to a transport."""
    body = json.dumps(error_body(message, kind, code=code)).encode()
    head = [
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}",
        "content-type: application/json",
        f"content-length: {len(body)}",
        "connection: close",
    ]
    if status == 503:
        head.append("retry-after: 1")
    return ("\r\n".join(head) + "\r\n\r\n").encode("ascii") + body
