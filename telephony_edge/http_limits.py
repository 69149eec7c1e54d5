"""What a client can hold of a worker's HTTP server before it has proved anything.

Slow and silent connections
    aiohttp's ``RequestHandler`` arms its keep-alive timer when a connection
    is made (not only after a response) and closes the connection when it
    fires while no complete request head has arrived. So its
    ``keepalive_timeout`` bounds both the time a client may take to send a
    request head (nothing at all, or a slowloris trickling headers) and the
    idle time between keep-alive requests: no watchdog of our own is needed,
    only a sane value (an ``AppRunner`` without one keeps aiohttp's
    ``RequestHandler`` default, 3630 s). ``server.idle_timeout_s`` sets it.
    Once a request head is in, bounding its handler is the handler's job.

Pending WebSockets
    A Media Streams WebSocket is anonymous until its ``start`` carries a
    valid token: anyone can open many and send nothing for
    ``START_TIMEOUT_S``. :class:`PendingWebSockets` counts upgrades on the
    paths given to it from the request until the handler calls
    :func:`admitted` (or ends), and answers 503 *before upgrading* when
    ``server.max_pending_websockets`` are already pending. The slot travels
    to the handler in a context variable, so no handler signature changes.

Requests that cannot be parsed
    aiohttp answers a request it cannot parse (a header line past 8190 bytes,
    bad chunking, a bad header name) with 400 itself, but logs it at ERROR
    with a traceback, as if the edge had failed. :class:`ClientFaults` drops
    such a record and reports bad input instead (``source="http"``,
    :mod:`telephony_edge.badinput`: counted, a warning rate-limited per
    client, no traceback): the client's fault, not the edge's.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from telephony_edge import badinput, metrics
from telephony_edge.config import ServerSettings
from telephony_edge.logs import sampled

log = logging.getLogger(__name__)

_REFUSED = metrics.BAD_INPUT.labels(source="pending-websockets")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _Slot:
    """One pending WebSocket's place in the count; released once."""

    __slots__ = ("_held", "_owner")

    def __init__(self, owner: PendingWebSockets) -> None:
        self._owner = owner
        self._held = True
        owner.pending += 1

    def release(self) -> None:
        if self._held:
            self._held = False
            self._owner.pending -= 1


_SLOT: contextvars.ContextVar[_Slot | None] = contextvars.ContextVar(
    "pending_websocket_slot", default=None
)


def admitted() -> None:
    """The current request's WebSocket proved itself: it no longer counts as pending.

    A no-op outside a counted request (e.g. in-process tests without the cap).
    """
    slot = _SLOT.get()
    if slot is not None:
        slot.release()


class PendingWebSockets:
    """Caps WebSocket upgrades on ``paths`` that have not yet been :func:`admitted`."""

    def __init__(self, limit: int, paths: Iterable[str]) -> None:
        self.limit = limit
        self.paths = frozenset(paths)
        self.pending = 0
        self.refused = 0

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        upgrade = request.headers.get("Upgrade", "").lower() == "websocket"
        if not upgrade or request.path not in self.paths:
            return await handler(request)
        if self.pending >= self.limit:
            self._refuse(request)
        slot = _Slot(self)
        token = _SLOT.set(slot)
        try:
            return await handler(request)
        finally:
            slot.release()
            _SLOT.reset(token)

    def _refuse(self, request: web.Request) -> None:
        _REFUSED.inc()
        self.refused += 1
        if sampled(self.refused):
            log.warning(
                "WebSocket refused: %d already pending (server.max_pending_websockets)",
                self.pending,
                extra={"path": request.path, "refused": self.refused},
            )
        raise web.HTTPServiceUnavailable(
            text="too many pending WebSockets; try again\n", headers={"Retry-After": "1"}
        )


class ClientFaults(logging.Filter):
    """On ``aiohttp.server``: a request aiohttp answered 4xx unparsed is a warning, not an error."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError) or not 400 <= exc.code < 500:
            return True
        self.count += 1
        # aiohttp logs "Error handling request from %s" with the client's address
        args = record.args if isinstance(record.args, tuple) else ()
        peer = args[0] if args and isinstance(args[0], str) else None
        # the type only: aiohttp's message quotes the client's bytes (an Authorization header)
        error = f"unparseable HTTP request ({type(exc).__name__}): {exc.code}"
        badinput.report("http", error, peer)
        return False


def install(app: web.Application, server: ServerSettings, paths: Iterable[str]) -> dict[str, Any]:
    """Add the pending-WebSocket cap to ``app``; the ``AppRunner`` keyword arguments to use."""
    app.middlewares.append(PendingWebSockets(server.max_pending_websockets, paths).middleware)
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, ClientFaults) for f in server_log.filters):
        server_log.addFilter(ClientFaults())
    return {"keepalive_timeout": server.idle_timeout_s}
