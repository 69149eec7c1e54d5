"""Who the client is behind a reverse proxy: the forwarding header, read from trusted hops only.

Theory of operation
-------------------
Behind Caddy, an Ingress or a cloud load balancer, every request's socket
comes from the proxy, so ``request.remote`` names the proxy and every browser
shares one public-key rate limit. A proxy writes the address it took the
request from into a header: ``X-Forwarded-For`` (Caddy, ingress-nginx,
Envoy, Traefik, the cloud load balancers) or ``Forwarded`` (RFC 7239), and
a proxy in front of another appends to what it was given.

Anyone can write those headers, so they are read only from a hop the
operator named (``server.trusted_proxies``: addresses or CIDRs; empty, the
default: the headers are ignored and no middleware is installed). The chain
is walked from the right, the hop closest to the edge: each address that is
itself a trusted proxy passes the question one hop further; the first one
that is not is the client. So a client that writes its own header before a
proxy that appends gets its own address all the same, and a client that
connects to the edge directly is its socket's address whatever it writes.
A hop the chain cannot name (``unknown``, an obfuscated ``_node``, garbage)
ends the walk at the last trusted hop: an address the edge knows is better
than one nobody vouched for. When every hop is trusted, the leftmost is
the client.

Only the header the proxy writes is read (``server.client_address_header``):
a proxy that sets ``X-Forwarded-For`` passes a client's ``Forwarded`` header
through untouched, so reading both would let a client choose its address.

Why not aiohttp-remotes: its ``XForwardedStrict``/``ForwardedStrict`` answer
400 (logged at ERROR) to every request whose chain is not exactly as long as
the trusted list (a kubelet's probe, a Prometheus scrape, a client that
sends its own header through an appending proxy), and ``XForwardedFiltered``
does not look at the socket's peer, so a client that connects directly picks
its address by writing the header.

The middleware clones the request with the client's address as
``request.remote``: the public-key rate limits, bad-input warnings and
call records all see the client.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass

from aiohttp import hdrs, web

from telephony_edge.config import ServerSettings
from telephony_edge.config_values import ClientAddressHeader

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: hops walked from the right at most; a chain longer than this is not an honest one
MAX_HOPS = 16


def parse_node(node: str) -> IPAddress | None:
    """An address from a chain's entry: ``192.0.2.1``, ``192.0.2.1:443``, ``[2001:db8::1]:443``."""
    node = node.strip()
    if node.startswith("["):
        node = node[1 : node.find("]")] if "]" in node else ""
    elif node.count(":") == 1:  # IPv4 with a port
        node = node.partition(":")[0]
    try:
        address = ipaddress.ip_address(node)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


@dataclass(frozen=True, slots=True)
class TrustedProxies:
    """The proxies whose forwarding header names the client, and which header that is."""

    networks: tuple[IPNetwork, ...]
    header: ClientAddressHeader = "x-forwarded-for"

    @classmethod
    def parse(cls, networks: Iterable[str], header: ClientAddressHeader) -> TrustedProxies:
        return cls(tuple(ipaddress.ip_network(n, strict=False) for n in networks), header)

    def trusts(self, address: IPAddress | None) -> bool:
        return address is not None and any(address in network for network in self.networks)

    def chain(self, request: web.Request) -> list[str]:
        """The header's hops, the client's side first (several header lines join in order)."""
        if self.header == "forwarded":
            return [element.get("for", "") for element in request.forwarded]
        lines = request.headers.getall(hdrs.X_FORWARDED_FOR, ())
        return [hop for line in lines for hop in line.split(",")]

    def client(self, peer: str | None, chain: Sequence[str]) -> str | None:
        """The client's address, given the socket's ``peer`` and the header's ``chain``."""
        hop = parse_node(peer) if peer else None
        if not self.trusts(hop):
            return peer
        for node in reversed(chain[-MAX_HOPS:]):
            named = parse_node(node)
            if named is None:
                break
            hop = named
            if not self.trusts(hop):
                break
        return str(hop)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        peer = request.remote
        client = self.client(peer, self.chain(request))
        if client is not None and client != peer:
            request = request.clone(remote=client)
        return await handler(request)


def install(app: web.Application, server: ServerSettings) -> None:
    """Put the middleware first on ``app`` when any proxy is trusted (none: nothing to do)."""
    if server.trusted_proxies:
        proxies = TrustedProxies.parse(server.trusted_proxies, server.client_address_header)
        app.middlewares.insert(0, proxies.middleware)
