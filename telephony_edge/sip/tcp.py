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
(§18.2.2) and its in-dialog requests reuse it. Which connections it keeps
(per source, a full table, nothing sent, slow, idle, live dialogs) is
:mod:`telephony_edge.sip.tcp_policy`'s; each closure is counted in
``telephony_edge_sip_tcp_closed_total{reason}``. A send to an address with
no connection opens one (§18.1.1); when that address was a live call's
connection, the new one goes to the call's target (its Contact or route: the
caller's source port was ephemeral), from ``dialogs``, the shell's map. A
connection of ours that cannot be opened is counted in
``telephony_edge_sip_connect_failures_total{transport,reason}`` and told to
the sender (``failed``: the shell's, for the call it was for).

With two addresses (a dual-stack worker: IPv4 and IPv6) it listens on both,
on the same port; a connection is known by its peer address either way.

SIP over TLS is the same side on its own port with a handshake after the
policy has admitted a connection (:class:`~telephony_edge.sip.tls.TlsSide`):
a stream writes nothing until it is :attr:`SipStream.ready`.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import Counter
from collections.abc import Callable
from typing import cast

from telephony_edge import badinput, metrics
from telephony_edge.errors import os_reason
from telephony_edge.sip import tcp_policy
from telephony_edge.sip.parse import DEFAULT_LIMITS, Limits
from telephony_edge.sip.sources import source_key

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

    def __init__(self, side: TcpSide, outbound: bool = False) -> None:
        self.side = side
        self.outbound = outbound  # opened by the edge (§18.1.1)
        self.framer = StreamFramer(side.limits)
        self.transport: asyncio.Transport | None = None
        self.peer: Address = ("", 0)
        self.opened_at = 0.0
        self.last_activity = 0.0
        self.partial_since: float | None = None
        self.got_message = False  # a complete SIP message (not a keep-alive) came
        self.ready = False  # may carry SIP (TLS: once its handshake is done)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a stream server's transport; uvloop's is not a subclass of asyncio.Transport
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.peer = (str(peer[0]), int(peer[1]))
        self.opened_at = self.last_activity = asyncio.get_running_loop().time()
        if not self.side.admit(self):
            self.transport.abort()
            return
        self.side.opened(self)

    def data_received(self, data: bytes) -> None:
        now = asyncio.get_running_loop().time()
        self.last_activity = now
        try:
            messages = self.framer.feed(data)
        except FramingError as exc:
            why = f"{exc}: connection closed"
            badinput.report(self.side.source, why, self.peer[0], port=self.peer[1])
            self.side.framing_errors += 1
            self.close()
            return
        self.partial_since = (self.partial_since or now) if self.framer.pending else None
        for message in messages:
            if not self.got_message and message != KEEPALIVE:
                self.got_message = True
                self.side.spoke(self)
            self.side.deliver(message, self.peer)

    def connection_lost(self, exc: Exception | None) -> None:
        self.side.forget(self)

    def write(self, data: bytes) -> None:
        if self.ready and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    @property
    def closing(self) -> bool:
        return self.transport is not None and self.transport.is_closing()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class TcpSide:
    """The listening socket and the live connections; see the module docstring."""

    source = "sip-tcp"  # bad input's source (badinput)

    def __init__(
        self,
        deliver: Callable[[bytes, Address], None],
        *,
        limits: Limits = DEFAULT_LIMITS,
        policy: tcp_policy.Limits = tcp_policy.DEFAULT_LIMITS,
        dialogs: Callable[[], dict[Address, Address]] = dict,
        trusted: Callable[[str], bool] = lambda address: False,
    ) -> None:
        self.deliver = deliver
        self.limits = limits
        self.policy = policy
        self.dialogs = dialogs  # live calls over TCP: their connection's peer → their target
        self.trusted = trusted  # a trunk's address: no per-source cap (some open one per call)
        self.connections: dict[Address, SipStream] = {}
        self._per_host: Counter[str] = Counter()  # inbound connections by source address
        # inbound connections that have sent no message yet, oldest first: a full table's
        # victims in O(1) (none carries a call), whatever an idle-connection flood opens
        self._silent: dict[Address, SipStream] = {}
        self.accepted = 0
        self.refused = 0
        self.framing_errors = 0
        self.timed_out = 0
        self._servers: list[asyncio.Server] = []  # one per address listened on
        self._sweeper: asyncio.Task[None] | None = None
        self._connecting: set[asyncio.Task[None]] = set()

    async def start(self, hosts: str | tuple[str, ...], port: int, listen: bool = True) -> None:
        """Listen on ``port`` of each of ``hosts`` (an IPv4 and an IPv6 address: the port
        the first one got, when ``port`` is 0), unless not ``listen`` (only our own
        connections); and sweep. An OSError leaves nothing listening."""
        loop = asyncio.get_running_loop()
        if listen:
            try:
                for host in (hosts,) if isinstance(hosts, str) else hosts:
                    server = await loop.create_server(self._accept, host, self.port or port)
                    self._servers.append(server)
            except OSError:
                await self._close_servers()
                raise
        self._sweeper = asyncio.ensure_future(self._sweep())

    def _accept(self) -> SipStream:
        """The protocol of a connection to the listener."""
        return SipStream(self)

    @property
    def port(self) -> int:
        """The port listened on (0: none)."""
        sockets = self._servers[0].sockets if self._servers else ()
        return int(sockets[0].getsockname()[1]) if sockets else 0

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        for task in list(self._connecting):
            task.cancel()
        for stream in list(self.connections.values()):
            stream.close()
        await self._close_servers()

    async def _close_servers(self) -> None:
        servers, self._servers = self._servers, []
        for server in servers:
            server.close()
            await server.wait_closed()

    def opened(self, stream: SipStream) -> None:
        """``stream`` was admitted: a TCP one carries SIP at once."""
        stream.ready = True

    def admit(self, stream: SipStream) -> bool:
        """A new connection, under :mod:`~telephony_edge.sip.tcp_policy`'s rules 1 and 2."""
        policy, host = self.policy, source_key(stream.peer[0])
        if not stream.outbound:
            over = self._per_host[host] >= policy.max_per_source
            if over and not self.trusted(stream.peer[0]):
                return self._refuse(stream, "per_source", "too many connections from it")
            if len(self.connections) >= policy.max_connections:
                old = next(iter(self._silent.values()), None) or tcp_policy.victim(
                    self.connections.values(), self.in_use()
                )
                if old is None:
                    return self._refuse(stream, "full", "every connection carries a call")
                assert isinstance(old, SipStream)
                self._closed(old, "evicted")
                self.forget(old)
                old.close()
            self._per_host[host] += 1
            self._silent[stream.peer] = stream
        self.connections[stream.peer] = stream
        self.accepted += 1
        return True

    def _refuse(self, stream: SipStream, reason: str, why: str) -> bool:
        self.refused += 1
        self._closed(stream, reason)
        badinput.report(self.source, f"connection refused: {why}", stream.peer[0], count=False)
        return False

    def _closed(self, stream: SipStream, reason: str) -> None:
        metrics.SIP_TCP_CLOSED.labels(reason=reason).inc()

    def spoke(self, stream: SipStream) -> None:
        """``stream`` sent its first SIP message."""
        if self._silent.get(stream.peer) is stream:
            del self._silent[stream.peer]

    def forget(self, stream: SipStream) -> None:
        self.spoke(stream)
        if self.connections.get(stream.peer) is stream:
            del self.connections[stream.peer]
            host = source_key(stream.peer[0])
            if not stream.outbound:
                self._per_host[host] -= 1
                if self._per_host[host] <= 0:
                    del self._per_host[host]

    def in_use(self) -> set[Address]:
        """The peers that carry a live call: its caller's connection, or ours to its target."""
        return {address for pair in self.dialogs().items() for address in pair}

    def send(
        self,
        dest: Address,
        data: bytes,
        server_name: str | None = None,
        failed: Callable[[str], None] | None = None,
    ) -> None:
        """On the connection to ``dest``; when it is gone and ``dest`` was a call's, on one
        to that call's target (its Contact or route: the caller's source port was
        ephemeral, RFC 3261 §18.1.1, RFC 5923), opened if need be (over TLS, the server's
        certificate checked for ``server_name``, default the address). A connection that
        cannot be opened: ``failed`` hears why."""
        stream = self.connections.get(dest)
        if stream is None or stream.closing:
            dest = self.dialogs().get(dest, dest)
            stream = self.connections.get(dest)
        if stream is not None and not stream.closing:
            stream.write(data)
            return
        task = asyncio.ensure_future(self._connect_and_send(dest, data, server_name, failed))
        self._connecting.add(task)
        task.add_done_callback(self._connecting.discard)

    async def connect(self, dest: Address, server_name: str | None = None) -> SipStream:
        """A connection of ours to ``dest`` (raises OSError or TimeoutError); TCP has no
        use for ``server_name`` (:class:`~telephony_edge.sip.tls.TlsSide` checks it)."""
        loop = asyncio.get_running_loop()
        _, stream = await asyncio.wait_for(
            loop.create_connection(lambda: SipStream(self, outbound=True), dest[0], dest[1]),
            self.policy.read_timeout,
        )
        return stream

    async def _connect_and_send(
        self,
        dest: Address,
        data: bytes,
        server_name: str | None,
        failed: Callable[[str], None] | None,
    ) -> None:
        try:
            stream = await self.connect(dest, server_name)
        except (OSError, TimeoutError) as exc:
            kind = self.source.removeprefix("sip-").upper()
            label, why = self.connect_failure(exc)
            metrics.SIP_CONNECT_FAILURES.labels(transport=kind.lower(), reason=label).inc()
            named = f" ({server_name})" if server_name and server_name != dest[0] else ""
            reason = f"{kind} to {dest[0]}:{dest[1]}{named}: {why}"
            log.info(f"SIP {kind} connect failed", extra={"peer": str(dest), "reason": reason})
            if failed is not None:
                failed(reason)
            return
        stream.write(data)

    def connect_failure(self, exc: OSError | TimeoutError) -> tuple[str, str]:
        """Why a connection of ours could not be opened: the metric's reason, a few words."""
        if isinstance(exc, TimeoutError):
            return "timeout", "no connection in time"
        return "refused", os_reason(exc)

    async def _sweep(self) -> None:
        """Close what :func:`~telephony_edge.sip.tcp_policy.expired` says (rules 3-5)."""
        loop = asyncio.get_running_loop()
        policy = self.policy
        while True:
            await asyncio.sleep(min(1.0, policy.read_timeout / 2, policy.first_message_timeout / 2))
            now = loop.time()
            in_use = self.in_use()
            for stream in list(self.connections.values()):
                if stream.closing:
                    continue  # closed by an earlier sweep, still flushing
                reason = tcp_policy.expired(stream, now, policy, in_use)
                if reason is None:
                    continue
                self.timed_out += 1
                self._closed(stream, reason)
                stream.close()
                host, port = stream.peer
                if reason == "slow":
                    why = f"a message unfinished after {policy.read_timeout:g}s: closed"
                    badinput.report(self.source, why, host, port=port)
                elif reason == "no_message":
                    why = f"no SIP message {policy.first_message_timeout:g}s after connecting"
                    badinput.report(self.source, f"{why}: closed", host, port=port)
