"""Which remote ICE candidate addresses the edge may send STUN and media to.

Theory of operation
-------------------
An offer names the addresses the edge will then send ICE connectivity checks
(STUN) to, retransmitted for seconds, and media after. Anyone holding the
public key can write an offer, so without a check the edge is a packet
cannon aimed wherever the offer says: its own private network, its loopback
services, the cloud metadata service (``169.254.169.254``). So every remote
address is judged here before aioice may pair it:

* always refused: cloud-metadata addresses, unspecified (``0.0.0.0``, ``::``),
  multicast and broadcast. Nothing reachable lives there;
* refused unless ``webrtc.allowed_peer_networks`` lists a network holding
  them: loopback, link-local, private (RFC 1918, ``fc00::/7``) and every
  other address that is not globally routable (``100.64.0.0/10``, reserved,
  documentation ranges). The demo and the tests, on loopback, list
  ``127.0.0.0/8``, which also allows this machine's own interface addresses
  (a peer on the same host offers those); an edge serving a LAN lists that LAN;
* an IPv6 address that carries an IPv4 one (IPv4-mapped, 6to4, the NAT64
  prefix ``64:ff9b::/96``) is judged by the IPv4 address too, so a NAT64
  gateway is no way around the rule;
* mDNS names (``….local``) are refused: resolving one sends multicast on the
  edge's own network and can only ever find an address on that link. A
  browser that hides its host address behind one still connects through its
  server-reflexive candidate or a peer-reflexive one (its checks reach us).

Rules: pure functions of the address and the settings, no I/O but reading
this host's interface addresses once. The SDP of
the offer is filtered here (:func:`filter_offer`) before aiortc sees it; the
peer-reflexive and trickled addresses are judged at the ICE connection
(:func:`telephony_edge.webrtc.ice.guard`) with the same :class:`PeerPolicy`.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field

from aioice.ice import get_host_addresses

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: instance metadata services (AWS/GCP/Azure/OpenStack, AWS ECS tasks, AWS IPv6, Alibaba)
METADATA: frozenset[Address] = frozenset(
    ipaddress.ip_address(a)
    for a in ("169.254.169.254", "169.254.170.2", "fd00:ec2::254", "100.100.100.200")
)
#: kinds no allow-list can open
ALWAYS_REFUSED = frozenset({"cloud-metadata", "unspecified", "multicast", "broadcast"})
BROADCAST = ipaddress.IPv4Address("255.255.255.255")
NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
MDNS_SUFFIX = ".local"


def _embedded(ip: Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries (mapped, 6to4, NAT64), if any."""
    if isinstance(ip, ipaddress.IPv4Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def kind_of(ip: Address) -> str | None:
    """The kind of a non-public address (``loopback``, ``private`` …); None for a public one."""
    if ip in METADATA:
        return "cloud-metadata"
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_multicast:
        return "multicast"
    if ip == BROADCAST:
        return "broadcast"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_private:
        return "private"
    if not ip.is_global:
        return "reserved"
    return None


def parse_networks(networks: Iterable[str]) -> tuple[Network, ...]:
    """CIDRs (``10.0.0.0/8``, ``::1/128``; a bare address is its /32 or /128); ValueError."""
    return tuple(ipaddress.ip_network(n.strip(), strict=False) for n in networks)


@functools.lru_cache(maxsize=1)
def host_networks() -> tuple[Network, ...]:
    """This machine's own addresses (aioice's host candidates), each a /32 or /128, read once."""
    found: list[Network] = []
    for host in get_host_addresses(use_ipv4=True, use_ipv6=True):
        with contextlib.suppress(ValueError):
            found.append(ipaddress.ip_network(host.split("%", 1)[0]))
    return tuple(found)


def with_this_host(networks: tuple[Network, ...]) -> tuple[Network, ...]:
    """``networks``, plus this machine's own addresses if they allow loopback.

    Loopback means "this host": a peer on the same machine (the demo, a bot
    run next to the edge) offers its interface addresses, never 127.0.0.1
    (aioice leaves loopback out), and reaching them is reaching this host.
    """
    loopbacks = (ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1"))
    if any(a.version == n.version and a in n for a in loopbacks for n in networks):
        return networks + host_networks()
    return networks


@dataclass(frozen=True)
class PeerPolicy:
    """The operator's allow-list, and the judgement of one remote address against it."""

    allowed: tuple[Network, ...] = field(default_factory=tuple)

    @classmethod
    def from_cidrs(cls, cidrs: Iterable[str]) -> PeerPolicy:
        """The policy of an allow-list; loopback in it allows this host's own addresses too."""
        return cls(with_this_host(parse_networks(cidrs)))

    def refusal(self, host: str) -> str | None:
        """Why the edge may not send to ``host`` (a kind, e.g. ``private``); None if it may."""
        if host.lower().rstrip(".").endswith(MDNS_SUFFIX):
            return "mdns"
        try:
            ip = ipaddress.ip_address(host.split("%", 1)[0])  # fe80::1%eth0: the scope is moot
        except ValueError:
            return "not-an-address"
        inner = _embedded(ip)
        judged = ip if inner is None else inner  # where the packets would end up
        kind = kind_of(judged)
        if kind is None:
            return None
        if kind in ALWAYS_REFUSED:
            return kind
        if any(a.version == n.version and a in n for a in {ip, judged} for n in self.allowed):
            return None
        return kind


@dataclass(frozen=True)
class Refused:
    """A remote candidate left out: its address and why."""

    host: str
    kind: str


def _candidate_host(line: str) -> str | None:
    """The connection address of an ``a=candidate:`` line (its fifth field)."""
    fields = line.split()
    return fields[4] if len(fields) >= 8 else None


def filter_offer(sdp: str, policy: PeerPolicy) -> tuple[str, list[Refused]]:
    """``sdp`` without the candidates ``policy`` refuses, and what was left out.

    A candidate line too short to parse is left for aiortc, which refuses it.
    """
    kept: list[str] = []
    refused: list[Refused] = []
    for line in sdp.splitlines(keepends=True):
        if line.startswith("a=candidate:"):
            host = _candidate_host(line)
            kind = None if host is None else policy.refusal(host)
            if host is not None and kind is not None:
                refused.append(Refused(printable(host), kind))
                continue
        kept.append(line)
    return "".join(kept), refused


def printable(host: str) -> str:
    """A refused host for a log line: the address as parsed, never the sender's raw text."""
    try:
        return str(ipaddress.ip_address(host.split("%", 1)[0]))
    except ValueError:
        return "a name"


def summary(refused: list[Refused]) -> str:
    """``3 ICE candidates refused: private 10.0.0.5, cloud-metadata 169.254.169.254, …``."""
    shown = ", ".join(f"{r.kind} {r.host}" for r in refused[:4])
    more = f" and {len(refused) - 4} more" if len(refused) > 4 else ""
    plural = "s" if len(refused) != 1 else ""
    return f"{len(refused)} ICE candidate{plural} refused: {shown}{more}"
