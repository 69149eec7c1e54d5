"""SIP over TCP (RFC 3261 §18.3): Content-Length framing (sans-I/O) and the connections.

Theory of operation
-------------------
A stream carries messages back to back; :class:`StreamFramer` cuts them out
by their ``Content-Length`` (required on streams: a head without one is a
framing error, as is a head or body past the UA's size limits), and passes
RFC 5626 keep-alives through (``CRLFCRLF`` ping, answered ``CRLF`` by the UA).
A framing error cannot be answered (the next message's start is lost): the
connection is closed, as §18.3 says, and counted as bad input (``sip-tcp``,
as is a message left unfinished past ``read_timeout``).

:class:`TcpSide` is the asyncio part: a listening socket on the SIP port,
one :class:`SipStream` per connection, registered by its peer address so
that the UA's responses go back on the connection the request came on
(§18.2.2) and its in-dialog requests reuse it. Bounded: at most
``max_connections`` (beyond, a new one is closed at once), a partial message
may take ``read_timeout`` seconds at most (slow senders), and a connection
idle for ``idle_timeout`` is closed. A send to an address with no connection
opens one (§18.1.1).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from typing import cast

from telephony_edge import badinput
from telephony_edge.sip.message import DEFAULT_LIMITS, Limits

log = logging.getLogger(__name__)

Address = tuple[str, int]
_CONTENT_LENGTH = re.compile(rb"^(?:content-length|l)[ \t]*:[ \t]*(\d+)[ \t]*\r?$", re.I | re.M)
KEEPALIVE = b"\r\n\r\n"
MAX_LENGTH_DIGITS = 6  # as the parser's: no message of the edge's is near a megabyte


class FramingError(Exception):
    """The stream cannot be cut into messages any more: close the connection."""


class StreamFramer:
    """Cuts a byte stream into SIP messages (and keep-alive pings); see the module docstring."""

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        self.limits = limits
        self._buffer = bytearray()

    @property
    def pending(self) -> bool:
        """Part of a message is waiting for the rest."""
        return bool(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        self._buffer += data
        out: list[bytes] = []
        while self._buffer:
            if self._buffer.startswith(b"\r\n"):
                if self._buffer.startswith(KEEPALIVE):
                    del self._buffer[:4]
                    out.append(KEEPALIVE)
                elif KEEPALIVE.startswith(self._buffer):
                    break  # maybe a ping still arriving
                else:
                    del self._buffer[:2]  # a lone CRLF (a pong, or padding): skipped
                continue
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buffer) > self.limits.max_message_bytes:
                    raise FramingError("message head too long")
                break
            head = bytes(self._buffer[: end + 4])
            match = _CONTENT_LENGTH.search(head)
            if match is None:
                raise FramingError("no Content-Length on a stream")
            if len(match.group(1)) > MAX_LENGTH_DIGITS:  # int() of 5000 digits raises
                raise FramingError("Content-Length too long")
            length = int(match.group(1))
            total = end + 4 + length
            if total > self.limits.max_message_bytes:
                raise FramingError(f"message of {total} bytes is too large")
            if len(self._buffer) < total:
                break
            out.append(bytes(self._buffer[:total]))
            del self._buffer[:total]
        return out


class SipStream(asyncio.Protocol):
    """One TCP connection: framed messages to the endpoint, the UA's bytes back."""

    def __init__(self, side: TcpSide) -> None:
        self.side = side
        self.framer = StreamFramer(side.limits)
        self.transport: asyncio.Transport | None = None
        self.peer: Address = ("", 0)
        self.last_activity = 0.0
        self.partial_since: float | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a stream server's transport; uvloop's is not a subclass of asyncio.Transport
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.peer = (str(peer[0]), int(peer[1]))
        self.last_activity = asyncio.get_running_loop().time()
        if not self.side.admit(self):
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        now = asyncio.get_running_loop().time()
        self.last_activity = now
        try:
            messages = self.framer.feed(data)
        except FramingError as exc:
            badinput.report("sip-tcp", f"{exc}: connection closed", self.peer[0], port=self.peer[1])
            self.side.framing_errors += 1
            self.close()
            return
        self.partial_since = (self.partial_since or now) if self.framer.pending else None
        for message in messages:
            self.side.deliver(message, self.peer)

    def connection_lost(self, exc: Exception | None) -> None:
        self.side.forget(self)

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    @property
    def closing(self) -> bool:
        return self.transport is not None and self.transport.is_closing()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class TcpSide:
    """The listening socket and the live connections; see the module docstring."""

    def __init__(
        self,
        deliver: Callable[[bytes, Address], None],
        *,
        limits: Limits = DEFAULT_LIMITS,
        max_connections: int = 1000,
        read_timeout: float = 10.0,
        idle_timeout: float = 600.0,
    ) -> None:
        self.deliver = deliver
        self.limits = limits
        self.max_connections = max_connections
        self.read_timeout = read_timeout
        self.idle_timeout = idle_timeout
        self.connections: dict[Address, SipStream] = {}
        self.accepted = 0
        self.refused = 0
        self.framing_errors = 0
        self.timed_out = 0
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._connecting: set[asyncio.Task[None]] = set()

    async def start(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: SipStream(self), host, port)
        self._sweeper = asyncio.ensure_future(self._sweep())

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        for task in list(self._connecting):
            task.cancel()
        for stream in list(self.connections.values()):
            stream.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def admit(self, stream: SipStream) -> bool:
        if len(self.connections) >= self.max_connections:
            self.refused += 1
            return False
        self.connections[stream.peer] = stream
        self.accepted += 1
        return True

    def forget(self, stream: SipStream) -> None:
        if self.connections.get(stream.peer) is stream:
            del self.connections[stream.peer]

    def send(self, dest: Address, data: bytes) -> None:
        """On the connection to ``dest``, or a new one (§18.1.1)."""
        stream = self.connections.get(dest)
        if stream is not None:
            stream.write(data)
            return
        task = asyncio.ensure_future(self._connect_and_send(dest, data))
        self._connecting.add(task)
        task.add_done_callback(self._connecting.discard)

    async def _connect_and_send(self, dest: Address, data: bytes) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, stream = await asyncio.wait_for(
                loop.create_connection(lambda: SipStream(self), dest[0], dest[1]),
                self.read_timeout,
            )
        except (OSError, TimeoutError) as exc:
            log.info("SIP TCP connect failed", extra={"peer": str(dest), "reason": repr(exc)})
            return
        stream.write(data)

    async def _sweep(self) -> None:
        """Close connections idle too long, or slow to finish a message."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(min(1.0, self.read_timeout / 2))
            now = loop.time()
            for stream in list(self.connections.values()):
                if stream.closing:
                    continue  # closed by an earlier sweep, still flushing
                slow = stream.partial_since is not None and (
                    now - stream.partial_since > self.read_timeout
                )
                if slow or now - stream.last_activity > self.idle_timeout:
                    self.timed_out += 1
                    stream.close()
                if slow:
                    host, port = stream.peer
                    reason = f"a message unfinished after {self.read_timeout:g}s: closed"
                    badinput.report("sip-tcp", reason, host, port=port)
