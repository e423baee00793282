"""What one server allows: :class:`ServerLimits` (request sizes, tokens, queue, connections, timeouts, drain)."""

from __future__ import annotations

from dataclasses import dataclass, field

from embellama.errors import ConfigurationError
from embellama.server.guard import default_max_connections

__all__ = ["ServerLimits"]


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
