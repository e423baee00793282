"""Connection hardening below the ASGI app: uvicorn's h11 protocol with deadlines, a connection cap and draining.

uvicorn (h11) has a keep-alive timeout but no limit on how long a client may take to send its request headers or
its body: a few hundred clients sending one header line every few seconds each hold a file descriptor for as long
as they like, and a server at its descriptor limit answers nobody (slowloris). :func:`guarded_protocol` makes a
protocol class that adds:

- a header deadline: a request's line and headers must arrive within ``header_timeout`` seconds of the connection
  opening (or of its first byte after keep-alive idling), else 408 and close;
- a body deadline: the whole body within ``body_timeout`` seconds of the headers, else 408 and close;
- a connection cap: past ``max_connections`` open connections, the one that has waited longest for a request
  (idle keep-alive, or still sending its headers) is closed to make room; when every connection is serving a
  request, the newcomer's request is answered 503 (``Retry-After``) in OpenAI's error shape and its connection
  closed. The default cap stays below the process's descriptor limit, so the server can always accept and answer;
- draining: at shutdown, a connection serving a request finishes it and closes; a connection waiting for one gets
  ``last_call`` seconds to send it, so a request already on its way is answered, not reset.

:class:`DrainingServer` is a ``uvicorn.Server`` whose shutdown also accepts the connections the kernel has already
queued, then stops listening and drains; :class:`Drain` is the app's side (the deadline after which a request still
running is answered 503 and counted as dropped).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import resource
import socket
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar, cast

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from embellama.server.errors import error_body, raw_error_response

__all__ = [
    "Drain",
    "DrainTimeout",
    "DrainingServer",
    "GuardSettings",
    "default_backlog",
    "default_max_connections",
    "guarded_protocol",
]

logger = logging.getLogger("uvicorn.error")  # configured by uvicorn: the drain report is part of its shutdown log

T = TypeVar("T")


def _open_file_limit() -> int:
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return 65536 if soft == resource.RLIM_INFINITY or soft <= 0 else int(soft)


def default_backlog() -> int:
    """Connections accepted per burst (the listen backlog): an eighth of the open-file limit, 16 to 2,048.

    asyncio accepts up to this many connections before any of them runs its ``connection_made``, so the cap can
    only make room once a burst is in: the cap plus this must stay under the descriptor limit."""
    return max(16, min(2048, _open_file_limit() // 8))


def default_max_connections() -> int:
    """Open connections the cap allows: the open-file limit less two accept bursts (:func:`default_backlog`) and a
    reserve (an eighth, at least 64) for models, child processes and logs; so a 256-descriptor process takes 128 and
    a 1,024-descriptor one 640, and the server never runs out of descriptors (asyncio would stop accepting for a
    second each time).

    Two bursts, not one: a connection evicted to make room for a newcomer gives its descriptor back only on the
    event loop's next turn, by which time the listener may have accepted a second burst."""
    soft = _open_file_limit()
    return max(16, soft - max(64, soft // 8) - 2 * default_backlog())


@dataclass
class GuardSettings:
    """Limits of one server's connections, and what the guard did (shared by its connections)."""

    header_timeout: float = 10.0
    body_timeout: float = 60.0
    max_connections: int = field(default_factory=default_max_connections)
    last_call: float = 1.0
    """At shutdown, seconds a connection waiting for a request still gets to send one."""
    waiting: OrderedDict[GuardedH11Protocol, None] = field(default_factory=OrderedDict)
    """Connections waiting for a request (fresh, idle keep-alive, or sending headers), the longest-waiting first."""
    open: int = 0
    timed_out: int = 0
    evicted: int = 0
    refused: int = 0
    draining: bool = False

    def report(self) -> dict[str, float]:
        """What the guard did, for ``/metrics``: open connections, and those it closed by reason."""
        return {
            "open": float(self.open),
            "timed_out": float(self.timed_out),
            "evicted": float(self.evicted),
            "refused": float(self.refused),
        }


async def _refuse(scope: Any, receive: Any, send: Any) -> None:
    """The ASGI app a connection over the cap is answered by: 503 in OpenAI's shape, then close."""
    body = json.dumps(
        error_body("server busy: too many open connections", "server_overloaded", code="too_many_connections")
    ).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
        (b"retry-after", b"1"),
    ]
    await send({"type": "http.response.start", "status": 503, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with header and body deadlines, a connection cap, and draining (see the module)."""

    guard: ClassVar[GuardSettings]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._phase: str | None = None  # "headers" | "body" while a deadline runs
        self._draining = False

    # ------------------------------------------------------------------ asyncio.Protocol
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        guard = self.guard
        guard.open += 1
        patience = guard.header_timeout
        if len(self.connections) > guard.max_connections:
            victim = next(iter(guard.waiting), None)  # the longest-waiting connection (this one is not listed yet)
            if victim is not None:
                guard.evicted += 1
                victim._close()
            else:
                guard.refused += 1
                self.app = _refuse
                patience = min(patience, guard.last_call)
        guard.waiting[self] = None
        self._arm("headers", patience)
        if guard.draining:
            self.shutdown()

    def data_received(self, data: bytes) -> None:
        if self._deadline is None and self.conn.their_state is h11.IDLE:
            self._arm("headers", self.guard.header_timeout)  # the first byte after keep-alive idling
        super().data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self.guard.waiting.pop(self, None)
        self.guard.open -= 1
        super().connection_lost(exc)

    # ------------------------------------------------------------------ uvicorn hooks
    def handle_events(self) -> None:
        super().handle_events()
        self._update()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._update()

    def shutdown(self) -> None:
        """Drain: finish the request being served, or give a waiting connection a last call to send one."""
        self._draining = True
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.keep_alive = False
            return
        if self.conn.their_state is h11.IDLE:
            self._unset_keepalive_if_required()
            self._arm("headers", self.guard.last_call)
            return
        self._close()

    # ------------------------------------------------------------------ internals
    def _update(self) -> None:
        """Follow the request's progress: waiting for headers, reading the body, or fully read."""
        if self.transport.is_closing():
            return
        state = self.conn.their_state
        if state is h11.IDLE:
            self.guard.waiting.setdefault(self, None)
            if self._deadline is None and self.conn.trailing_data[0]:  # part of a pipelined request is buffered
                self._arm("headers", self.guard.header_timeout)
            return
        self.guard.waiting.pop(self, None)
        if self._draining and self.cycle is not None:
            self.cycle.keep_alive = False
        if state is h11.SEND_BODY:
            if self._phase != "body":
                self._arm("body", self.guard.body_timeout)
        else:
            self._disarm()

    def _arm(self, phase: str, seconds: float) -> None:
        self._disarm()
        self._phase = phase
        self._deadline = self.loop.call_later(seconds, self._expire)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline, self._phase = None, None

    def _expire(self) -> None:
        phase, self._deadline, self._phase = self._phase, None, None
        if self.transport.is_closing():
            return
        guard = self.guard
        cycle = self.cycle
        if phase == "body":
            if cycle is not None and not cycle.response_started:
                guard.timed_out += 1
                message = f"the request body was not received within {guard.body_timeout:g} s"
                self.transport.write(raw_error_response(408, message, "invalid_request_error", "request_timeout"))
                cycle.response_started = cycle.response_complete = True  # the app's answer, if any, is dropped
                cycle.disconnected = True
                cycle.message_event.set()
            self._close()
            return
        if self.conn.trailing_data[0] and not self._draining:  # a request was started but its headers never ended
            guard.timed_out += 1
            message = f"the request headers were not received within {guard.header_timeout:g} s"
            self.transport.write(raw_error_response(408, message, "invalid_request_error", "request_timeout"))
        self._close()

    def _close(self) -> None:
        """Close now (an evicted, timed-out or drained connection); the request it was serving, if any, is lost."""
        self.guard.waiting.pop(self, None)
        self._disarm()
        if not self.transport.is_closing():
            self.transport.close()


def guarded_protocol(settings: GuardSettings) -> type[GuardedH11Protocol]:
    """A protocol class for ``uvicorn.Config(http=...)`` whose connections share ``settings``."""
    return cast(type[GuardedH11Protocol], type("GuardedH11Protocol", (GuardedH11Protocol,), {"guard": settings}))


class DrainTimeout(Exception):
    """A request still running at the end of the drain time (answered 503, counted as dropped)."""


class Drain:
    """The app's side of a graceful shutdown: requests in flight get ``seconds`` to finish; each one still running
    after that is cancelled, answered 503 and counted in :attr:`dropped`.

    Args:
        seconds: The drain time.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.started: float | None = None
        self.in_flight = 0
        self.dropped = 0
        self.finished = 0
        """Requests that finished after the drain began."""
        self._deadline: asyncio.Future[None] | None = None

    @property
    def draining(self) -> bool:
        """Whether the drain has begun."""
        return self.started is not None

    def begin(self) -> None:
        """Start the drain clock (on the event loop; idempotent)."""
        if self.started is not None:
            return
        self.started = time.monotonic()
        deadline = self._future()
        logger.info("draining: %d request(s) in flight get up to %g s to finish", self.in_flight, self.seconds)

        def expire() -> None:
            if not deadline.done():
                deadline.set_result(None)

        asyncio.get_running_loop().call_later(self.seconds, expire)

    async def run(self, handler: Callable[[], Awaitable[T]]) -> T:
        """Await ``handler()``; raise :class:`DrainTimeout` (after cancelling it) if the drain deadline comes first."""
        deadline = self._future()
        task = asyncio.ensure_future(handler())
        self.in_flight += 1
        try:
            await asyncio.wait((task, deadline), return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            task.cancel()
            raise
        finally:
            self.in_flight -= 1
        if self.started is not None:
            self.finished += task.done()
        if not task.done():
            task.cancel()
            self.dropped += 1
            raise DrainTimeout(
                "the server is shutting down and this request did not finish within its drain time "
                f"({self.seconds:g} s)"
            )
        return task.result()

    def _future(self) -> asyncio.Future[None]:
        if self._deadline is None:
            self._deadline = asyncio.get_running_loop().create_future()
        return self._deadline


class DrainingServer(uvicorn.Server):
    """A ``uvicorn.Server`` that shuts down gracefully: it takes the connections the kernel already accepted, stops
    listening, lets :class:`Drain` answer every request it has read (or drop it, 503, at the drain deadline), and
    logs what it dropped.

    Args:
        config: uvicorn's configuration (its ``http`` should be a :func:`guarded_protocol` class).
        drain: The app's drain.
        guard: The connection guard's settings, if ``config.http`` uses them.
    """

    def __init__(self, config: uvicorn.Config, drain: Drain, guard: GuardSettings | None = None) -> None:
        super().__init__(config)
        self.drain = drain
        self.guard = guard

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        loop = asyncio.get_running_loop()
        logger.info("Shutting down: no new connections; requests already sent get up to %g s", self.drain.seconds)
        taken = await self._take_backlog()
        for server in self.servers:
            server.close()
        for sock in sockets or []:
            sock.close()
        self.drain.begin()
        if self.guard is not None:
            self.guard.draining = True
        for connection in list(self.server_state.connections):
            connection.shutdown()
        last_call = self.guard.last_call if self.guard is not None else 1.0
        end = loop.time() + self.drain.seconds + last_call + 2.0  # dropped requests still get their 503 written
        state = self.server_state
        while (state.connections or state.tasks) and not self.force_exit and loop.time() < end:
            await asyncio.sleep(0.05)
        if state.tasks:
            logger.error("cancelling %d request task(s) still running after the drain", len(state.tasks))
            for task in list(state.tasks):
                task.cancel()
        for connection in list(state.connections):
            transport = getattr(connection, "transport", None)
            if transport is not None:
                transport.close()
        message = "drain done: %d request(s) finished during the drain, %d dropped at its deadline%s"
        extra = f"; {taken} queued connection(s) accepted at shutdown" if taken else ""
        log = logger.warning if self.drain.dropped else logger.info
        log(message, self.drain.finished, self.drain.dropped, extra)
        if not self.force_exit:
            await self.lifespan.shutdown()

    async def _take_backlog(self) -> int:
        """Accept the connections the kernel completed but the loop has not picked up (closing the listener would
        reset them), so their requests are answered too."""
        loop = asyncio.get_running_loop()
        config, state = self.config, self.server_state

        def make() -> asyncio.Protocol:
            protocol: asyncio.Protocol = config.http_protocol_class(  # type: ignore[call-arg]
                config=config, server_state=state, app_state=self.lifespan.state
            )
            return protocol

        taken = 0
        for server in getattr(self, "servers", []):
            for listening in server.sockets:
                sock = socket.socket(fileno=os.dup(listening.fileno()))
                try:
                    sock.setblocking(False)
                    while taken < config.backlog:
                        try:
                            conn, _address = sock.accept()
                        except OSError:  # nothing queued (EAGAIN), or out of descriptors
                            break
                        conn.setblocking(False)
                        await loop.connect_accepted_socket(make, conn)
                        taken += 1
                finally:
                    sock.close()
        return taken
