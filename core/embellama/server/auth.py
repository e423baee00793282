"""The API key: the bearer header it requires (checked once, when the app is made) and each request's check."""

from __future__ import annotations

import hmac

from embellama.errors import ConfigurationError
from embellama.server.errors import ApiError

__all__ = ["check_api_key", "check_authorization"]


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


def check_authorization(header: str, required: bytes) -> None:
    """Compare a request's ``Authorization`` header with the one :func:`check_api_key` made, as bytes and in
    constant time (Starlette decodes header bytes as Latin-1, so any bytes a client sends compare, and fail).

    Raises:
        ApiError: 401 ``invalid_api_key`` when they differ.
    """
    if not hmac.compare_digest(header.encode("latin-1"), required):
        raise ApiError(401, "missing or invalid API key", "authentication_error", code="invalid_api_key")
