"""A small authoritative DNS server on 127.0.0.1 for the tests: real UDP, real DNS wire
format (dnspython builds the answers), a zone given as a dict, every query logged.

``delay`` holds each answer that long (a slow resolver); ``silent`` answers nothing.
A name not in the zone is NXDOMAIN; a name in it without the type asked is NOERROR
with no answer (NODATA).
"""

from __future__ import annotations

import asyncio

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset


class DnsServer(asyncio.DatagramProtocol):
    def __init__(
        self, zone: dict[tuple[str, str], list[str]], ttl: int = 300, delay: float = 0.0
    ) -> None:
        self.zone = {
            (name.lower().rstrip("."), kind.upper()): v for (name, kind), v in zone.items()
        }
        self.ttl = ttl
        self.delay = delay
        self.silent = False
        self.queries: list[tuple[str, str]] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    @property
    def address(self) -> str:
        assert self.transport is not None
        host, port = self.transport.get_extra_info("sockname")[:2]
        return f"{host}:{port}"

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        query = dns.message.from_wire(data)
        question = query.question[0]
        name = question.name.to_text(omit_final_dot=True).lower()
        kind = dns.rdatatype.to_text(question.rdtype)
        self.queries.append((name, kind))
        if self.silent:
            return
        response = dns.message.make_response(query)
        found = self.zone.get((name, kind))
        if found:
            response.answer.append(dns.rrset.from_text(question.name, self.ttl, "IN", kind, *found))
        elif not any(known == name for known, _ in self.zone):
            response.set_rcode(dns.rcode.NXDOMAIN)
        wire = response.to_wire()
        loop = asyncio.get_running_loop()
        loop.call_later(self.delay, self._reply, wire, addr)

    def _reply(self, wire: bytes, addr: tuple[str, int]) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(wire, addr)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def start_dns(
    zone: dict[tuple[str, str], list[str]], ttl: int = 300, delay: float = 0.0
) -> DnsServer:
    loop = asyncio.get_running_loop()
    _, server = await loop.create_datagram_endpoint(
        lambda: DnsServer(zone, ttl, delay), local_addr=("127.0.0.1", 0)
    )
    return server
