"""The SIP call's RTP and RTCP sockets, and the random even ports they bind.

Each datagram goes straight to the socket's leg (:class:`MediaSink`), which
does everything else; a socket whose leg has closed drops what still comes.
A call with SRTP puts its session on both sockets (:meth:`RtpProtocol.secure`):
from then on what they receive is unprotected before the leg sees it (dropped
if it fails) and what goes out through their ``transport`` is protected
(:mod:`telephony_edge.sip.srtp`).
Ports are chosen at random in the configured range (:class:`RtpPorts`):
sequential ones would tell a prober where the next call's media is. A port is
taken only with the odd one above it, bound at the same time for RTCP: the
edge's SDP names no ``a=rtcp``, so the peer sends its reports there (RFC
3550), and were that port another process's (another worker's RTP in a shared
range, a softphone's), the reports would go to it and the call would have none. A call's
sockets are of its media's family (:mod:`telephony_edge.sip.family`), bound
on the worker's address in that family; the range is shared by both.
"""

from __future__ import annotations

import asyncio
import secrets
import socket
from collections.abc import Callable, Mapping
from typing import Protocol, cast

from telephony_edge.sip.family import Family, bound_socket, family_of
from telephony_edge.sip.rtp import Address
from telephony_edge.sip.srtp import SecureTransport, SrtpSession

RANDOM_BIND_ATTEMPTS = 16  # random ports tried before sweeping the range


class MediaSink(Protocol):
    """What a socket hands its datagrams to (the call's SIP leg)."""

    def on_rtp(self, data: bytes, source: Address) -> None: ...

    def on_rtcp(self, data: bytes, source: Address) -> None: ...


class RtpProtocol(asyncio.DatagramProtocol):
    """The RTP socket: hands every datagram to its leg."""

    rtcp = False

    def __init__(self) -> None:
        self.leg: MediaSink | None = None
        self.transport: asyncio.DatagramTransport | None = None
        self.srtp: SrtpSession | None = None
        self._plain: asyncio.DatagramTransport | None = None
        self._buffered: Callable[[], int] = _nothing_buffered
        self.rtcp_sock: socket.socket | None = None  # the odd port above, bound with this one

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's UDP transport is not a subclass of asyncio's; it has the same methods
        self.transport = self._plain = cast(asyncio.DatagramTransport, transport)
        # asyncio's and uvloop's UDP transports have it, untyped; looked up once, not per packet
        size = getattr(transport, "get_write_buffer_size", None)
        self._buffered = size if callable(size) else _nothing_buffered
        self.secure(self.srtp)

    def close(self) -> None:
        """Close the socket, and the RTCP port bound with it if no leg took that."""
        if self.transport is not None:
            self.transport.close()
        if self.rtcp_sock is not None:
            self.rtcp_sock.close()
            self.rtcp_sock = None

    def backlog(self) -> int:
        """Bytes the socket could not send yet (0 before it is open)."""
        return self._buffered()

    def secure(self, session: SrtpSession | None) -> None:
        """SRTP on this socket from now (None: plain RTP): in and out, whoever sends."""
        self.srtp = session
        if self._plain is not None:
            wrapped = None if session is None else SecureTransport(self._plain, session, self.rtcp)
            self.transport = cast(asyncio.DatagramTransport, wrapped or self._plain)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        if self.leg is None:
            return
        if self.srtp is not None:
            opened = self.srtp.receive(data)
            if opened is None:
                return
            data = opened
        self.leg.on_rtp(data, source_address(addr))


class RtcpProtocol(RtpProtocol):
    """The RTCP socket (RTP port + 1)."""

    rtcp = True

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        if self.leg is None:
            return
        if self.srtp is not None:
            opened = self.srtp.unprotect_rtcp(data)
            if opened is None:
                return
            data = opened
        self.leg.on_rtcp(data, source_address(addr))


def _nothing_buffered() -> int:
    return 0


def source_address(addr: tuple[str | int, ...]) -> Address:
    """(host, port) of a datagram's source; IPv4's is that already (no copy per packet)."""
    if len(addr) == 2 and type(addr[0]) is str and type(addr[1]) is int:
        return cast(Address, addr)
    return str(addr[0]), int(addr[1])


class RtpPorts:
    """Binds RTP sockets on even ports of the configured range (RTCP takes the odd one next),
    chosen at random: sequential ports would tell a prober where the next call's media is;
    ``hosts``: the address to bind in each family (one, or both for a dual-stack worker)."""

    def __init__(self, hosts: str | Mapping[Family, str], low: int, high: int) -> None:
        self.hosts = {family_of(hosts): hosts} if isinstance(hosts, str) else dict(hosts)
        self.low = low + (low % 2)
        self.high = high
        self.in_use: set[int] = set()

    @property
    def span(self) -> int:
        """How many even ports the range holds."""
        return max(0, (self.high - self.low) // 2 + 1)

    def candidates(self) -> list[int]:
        """Ports to try, in order: some at random, then every free one from a random start."""
        span = self.span
        if span == 0:
            return []
        start = secrets.randbelow(span)
        sweep = [self.low + 2 * ((start + i) % span) for i in range(span)]
        tries = [self.low + 2 * secrets.randbelow(span) for _ in range(RANDOM_BIND_ATTEMPTS)]
        return [p for p in tries + sweep if p not in self.in_use]

    async def bind(self, family: Family | None = None) -> tuple[RtpProtocol, int]:
        """An RTP socket in ``family`` (default: the first one), on a free port of the range
        whose odd neighbour is free too (bound for RTCP: its ``rtcp_sock``)."""
        host = self.hosts[family] if family is not None else next(iter(self.hosts.values()))
        loop = asyncio.get_running_loop()
        for port in self.candidates():
            if port in self.in_use:
                continue
            try:
                sock = bound_socket(host, port)
            except OSError:
                continue  # taken by another process: try the next
            try:
                rtcp = bound_socket(host, port + 1)
            except OSError:
                sock.close()  # its RTCP port is another's: the pair is not free
                continue
            _, protocol = await loop.create_datagram_endpoint(RtpProtocol, sock=sock)
            protocol.rtcp_sock = rtcp
            self.in_use.add(port)
            return protocol, port
        raise OSError(f"no free RTP port in {self.low}-{self.high}")

    def release(self, port: int) -> None:
        self.in_use.discard(port)
