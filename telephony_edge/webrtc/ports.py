"""Host ICE candidates on a configured UDP port range (``webrtc.media_port_min``/``max``).

A firewall in front of the edge opens one UDP range for media; aioice 0.13
binds its host sockets to port 0 (any ephemeral port) and has no option for
a range. :func:`host_candidates` does what aioice's
``Connection.get_component_candidates`` does for host candidates, binding
each address at a port of the range instead (starting at a random place in
it, so ports are not handed out in sequence), and leaves the STUN and TURN
candidates to aioice: server-reflexive ones through its
``server_reflexive_candidate`` on these sockets, relayed ones through
``get_component_candidates`` with no host address (the TURN client's socket
is outbound, to the TURN server, and needs no inbound rule).

An address with no free port in the range gets no candidate; a connection
with none at all is :class:`NoMediaPort` for the leg (503).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import socket
from dataclasses import dataclass

from aioice import Candidate, Connection, turn
from aioice.candidate import candidate_foundation, candidate_priority
from aioice.ice import StunProtocol, server_reflexive_candidate

log = logging.getLogger(__name__)

STUN_TIMEOUT_S = 5.0  # as aioice waits for its STUN/TURN servers


class NoMediaPort(Exception):
    """No UDP port of the range is free on any address: the offer cannot be answered."""


@dataclass(frozen=True, slots=True)
class PortRange:
    """Inclusive UDP port range for media."""

    low: int
    high: int

    def ports(self) -> list[int]:
        """Every port of the range, from a random one onwards (wrapping)."""
        span = list(range(self.low, self.high + 1))
        start = random.randrange(len(span))
        return span[start:] + span[:start]


def bind_in_range(address: str, ports: PortRange) -> socket.socket | None:
    """A non-blocking UDP socket bound to ``address`` at a free port of ``ports``."""
    family = socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET
    for port in ports.ports():
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.bind((address, port))
        except OSError:
            sock.close()
            continue
        sock.setblocking(False)
        return sock
    return None


async def host_candidates(
    connection: Connection, component: int, addresses: list[str], ports: PortRange
) -> list[Candidate]:
    """``component``'s candidates: host ones on ``ports``, then aioice's STUN/TURN ones."""
    loop = asyncio.get_running_loop()
    candidates: list[Candidate] = []
    protocols: list[StunProtocol] = []
    for address in addresses:
        sock = bind_in_range(address, ports)
        if sock is None:
            log.warning(
                "no free UDP port for WebRTC media in %d-%d on %s", ports.low, ports.high, address
            )
            continue
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, turn.UDP_SOCKET_BUFFER_SIZE)
        _, protocol = await loop.create_datagram_endpoint(
            lambda: StunProtocol(connection), sock=sock
        )
        host, port = sock.getsockname()[:2]
        protocol.local_candidate = Candidate(
            foundation=candidate_foundation("host", "udp", host),
            component=component,
            transport="udp",
            priority=candidate_priority(component, "host"),
            host=host,
            port=port,
            type="host",
        )
        protocols.append(protocol)
        candidates.append(protocol.local_candidate)
    connection._protocols += protocols
    if connection.stun_server:
        candidates += await _reflexive(protocols, connection.stun_server)
    if connection.turn_server:  # relayed only: no host address given
        candidates += await connection.get_component_candidates(component=component, addresses=[])
    return candidates


async def _reflexive(protocols: list[StunProtocol], server: tuple[str, int]) -> list[Candidate]:
    tasks = [
        asyncio.ensure_future(server_reflexive_candidate(p, server))
        for p in protocols
        if ipaddress.ip_address(p.local_candidate.host).version == 4
    ]
    if not tasks:
        return []
    done, pending = await asyncio.wait(tasks, timeout=STUN_TIMEOUT_S)
    for task in pending:
        task.cancel()
    return [t.result()[0] for t in done if t.exception() is None]
