"""The server's API key without a server: keys clients cannot send are refused when the app is made, and any bytes
in an ``Authorization`` header are a 401 (``tests/server/test_server_hardening.py`` sends them over HTTP)."""

from __future__ import annotations

import pytest

from embellama.errors import ConfigurationError
from embellama.server.auth import check_api_key, check_authorization
from embellama.server.errors import ApiError


@pytest.mark.parametrize("key", ["clé", "", "with space", "tab\t", "\x7f"])
def test_keys_clients_cannot_send_are_refused(key: str) -> None:
    with pytest.raises(ConfigurationError, match="printable ASCII"):
        check_api_key(key)


def test_no_key_requires_nothing() -> None:
    assert check_api_key(None) is None


@pytest.mark.parametrize(
    "header",
    ["", "s3cret", "Bearer wrong", "Bearer s3cr\xe9t", "\xff\xfe", "Bearer s3cret\x80", "bearer s3cret"],
)
def test_any_other_header_is_a_401(header: str) -> None:
    required = check_api_key("s3cret")
    assert required == b"Bearer s3cret"
    with pytest.raises(ApiError) as info:
        check_authorization(header, required)
    assert (info.value.status, info.value.kind, info.value.code) == (401, "authentication_error", "invalid_api_key")


def test_the_right_header_passes() -> None:
    required = check_api_key("s3cret")
    assert required is not None
    check_authorization("Bearer s3cret", required)
