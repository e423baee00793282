"""The server's errors in OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``.

Used by the routes (:class:`ApiError`) and by the connection guard, which answers below the ASGI app (a header
timeout, a connection refused at the cap) with :func:`raw_error_response`.
"""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

from starlette.responses import JSONResponse

__all__ = ["ApiError", "error_body", "raw_error_response"]


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
