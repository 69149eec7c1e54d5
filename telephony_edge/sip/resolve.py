"""RFC 3263 for the edge's own requests: a SIP URI's host name to an address and port.

Theory of operation
-------------------
A carrier's Record-Route or a PBX's Contact may name a host
(``sip:edge-in.carrier.net;lr``); a socket needs an address. :func:`target_of`
reads the URI as RFC 3263 §4 does (``maddr`` before the host, the port if
given, the transport the dialog already uses: the edge sends in-dialog requests
on the dialog's transport). :class:`SipResolver` then looks the target up:

1. an IP literal is itself;
2. a name in the hosts file (``/etc/hosts``: the operator's override, as
   glibc's ``files`` before ``dns``) is its address there;
3. with no port in the URI, NAPTR (§4.1): the ``s`` record of the lowest order
   and preference for the dialog's transport (``SIP+D2U``, ``SIP+D2T``,
   ``SIPS+D2T``) names the SRV to ask; without one, the usual ``_sip._udp`` /
   ``_sip._tcp`` / ``_sips._tcp`` (a ``sips:`` URI, or a ``sip:`` one over TLS:
   port 5061 too). The transport is never changed: NAPTR only finds the SRV
   name for the one the dialog uses. Then SRV (lowest priority
   first, the heaviest first among equals), each target's address in turn;
   with records but no target that resolves, the lookup fails;
4. otherwise the addresses of the edge's families (:mod:`telephony_edge.sip.family`),
   in its order: A for an IPv4 edge, AAAA for an IPv6 one, A then AAAA for
   a dual-stack one, at the URI's port or 5060/5061. An IP literal of a
   family the edge has no socket in does not resolve; an IPv4-mapped one is
   its IPv4 address (the edge's IPv6 sockets are IPv6 only).

:meth:`SipResolver.lookup_all` gives every address instead, in the order to try
them (RFC 3263 §4.3: each SRV target's addresses, lowest priority first, then
the next target's), for a request the edge starts itself and fails over
(:mod:`telephony_edge.sip.uac`, :mod:`telephony_edge.sip.register`).

Lookups go through dnspython's asyncio resolver (no thread, no blocking the
loop), bounded by ``timeout`` as a whole, and report the smallest TTL of the
records used. :class:`DnsCache` keeps answers that long and failures for
``NEGATIVE_TTL_S`` (RFC 2308's idea), with the time passed in; the shell that
sends (:mod:`telephony_edge.sip.outbound`) owns both.

Rules: no SIP here beyond reading a URI; every failure is :class:`Unresolvable`
with a short reason (never the DNS library's exception), so one name that does
not resolve is one transaction's problem and nobody else's.
"""

from __future__ import annotations

import asyncio
import os
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.nameserver
import dns.rdtypes.IN.NAPTR
import dns.rdtypes.IN.SRV
import dns.resolver

from telephony_edge.sip.family import Family, family_of, socket_host
from telephony_edge.sip.nat import ip_literal
from telephony_edge.sip.uri import SipUri

Address = tuple[str, int]

HOSTS_TTL_S = 60.0  # a hosts-file answer carries no TTL
RDTYPES: dict[Family, str] = {4: "A", 6: "AAAA"}
NEGATIVE_TTL_S = 30.0
MAX_CACHED = 4096


class Unresolvable(Exception):
    """No address for a target; ``str()`` is a short reason for the log."""


@dataclass(frozen=True, slots=True)
class Target:
    """What RFC 3263 §4 looks up for one URI."""

    host: str  # lower case, no brackets
    port: int | None  # None: the URI named none (SRV first)
    transport: str  # "UDP", "TCP" or "TLS"
    secure: bool  # sips:

    @property
    def tls(self) -> bool:
        """Over TLS: a ``sips:`` URI, or ``sip:`` with ``;transport=tls`` (RFC 3263 §4.1:
        both are ``_sips._tcp``, ``SIPS+D2T``, port 5061)."""
        return self.secure or self.transport == "TLS"

    @property
    def default_port(self) -> int:
        return 5061 if self.tls else 5060

    @property
    def srv_name(self) -> str:
        if self.tls:
            return f"_sips._tcp.{self.host}"
        return f"_sip._{'tcp' if self.transport == 'TCP' else 'udp'}.{self.host}"

    @property
    def naptr_service(self) -> str:
        if self.tls:
            return "SIPS+D2T"
        return "SIP+D2T" if self.transport == "TCP" else "SIP+D2U"


def target_of(uri: str, transport: str) -> Target:
    """The RFC 3263 target of a SIP URI sent on ``transport`` (ValueError if no SIP URI)."""
    parsed = SipUri.parse(uri)
    if parsed.scheme not in ("sip", "sips"):
        raise ValueError("not a SIP URI")
    host = (parsed.params.get("maddr") or parsed.host).strip("[]").lower().rstrip(".")
    return Target(host, parsed.port, transport.upper(), parsed.scheme == "sips")


class DnsCache:
    """Answers by target until their TTL, failures for ``negative_ttl``; ``now`` passed in.
    Bounded: past ``max_entries`` the oldest entry goes."""

    def __init__(self, negative_ttl: float = NEGATIVE_TTL_S, max_entries: int = MAX_CACHED):
        self.negative_ttl = negative_ttl
        self.max_entries = max_entries
        self._entries: OrderedDict[Target, tuple[float, Address | Unresolvable]] = OrderedDict()

    def get(self, target: Target, now: float) -> Address | Unresolvable | None:
        """The cached answer (an address, or the failure), None when unknown or expired."""
        found = self._entries.get(target)
        if found is None:
            return None
        if found[0] <= now:
            del self._entries[target]
            return None
        return found[1]

    def put(self, target: Target, answer: Address | Unresolvable, ttl: float, now: float) -> None:
        ttl = self.negative_ttl if isinstance(answer, Unresolvable) else ttl
        self._entries[target] = (now + max(ttl, 0.0), answer)
        self._entries.move_to_end(target)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)


class HostsFile:
    """``/etc/hosts``, read again when it changes."""

    def __init__(self, path: str = "/etc/hosts") -> None:
        self.path = path
        self._mtime: float | None = None
        self._names: dict[str, list[str]] = {}

    def addresses(self, name: str) -> list[str]:
        try:
            mtime = os.stat(self.path).st_mtime
        except OSError:
            return []
        if mtime != self._mtime:
            self._mtime, self._names = mtime, self._read()
        return self._names.get(name.lower(), [])

    def _read(self) -> dict[str, list[str]]:
        names: dict[str, list[str]] = {}
        try:
            with open(self.path, encoding="utf-8", errors="replace") as file:
                lines = file.read().splitlines()
        except OSError:
            return names
        for line in lines:
            fields = line.split("#", 1)[0].split()
            if len(fields) < 2 or ip_literal(fields[0]) is None:
                continue
            for name in fields[1:]:
                names.setdefault(name.lower().rstrip("."), []).append(fields[0])
        return names


class SipResolver:
    """See the module docstring. ``nameservers``: ``host`` or ``host:port`` (empty: the
    system's resolv.conf); ``families``: the edge's sockets', the first preferred."""

    def __init__(
        self,
        nameservers: Sequence[str] = (),
        timeout: float = 5.0,
        families: Sequence[Family] = (4,),
        hosts: HostsFile | None = None,
    ) -> None:
        self.timeout = timeout
        self.families = tuple(families)
        self.hosts = hosts or HostsFile()
        try:
            self._dns = dns.asyncresolver.Resolver(configure=not nameservers)
        except dns.resolver.NoResolverConfiguration:  # no resolv.conf: the hosts file only
            self._dns = dns.asyncresolver.Resolver(configure=False)
        if nameservers:
            self._dns.nameservers = [_nameserver(n) for n in nameservers]
        self._dns.lifetime = timeout

    async def lookup(self, target: Target) -> tuple[Address, float]:
        """The address and port to send to, and for how long that holds (seconds)."""
        try:
            async with asyncio.timeout(self.timeout):
                return await self._lookup(target)
        except TimeoutError:
            raise Unresolvable(f"no answer for {target.host} in {self.timeout:g} s") from None

    async def lookup_all(self, target: Target) -> list[Address]:
        """Every address to try for ``target``, in order (RFC 3263 §4.3); at least one."""
        try:
            async with asyncio.timeout(self.timeout):
                return await self._lookup_all(target)
        except TimeoutError:
            raise Unresolvable(f"no answer for {target.host} in {self.timeout:g} s") from None

    async def _lookup_all(self, target: Target) -> list[Address]:
        port = target.port or target.default_port
        if ip_literal(target.host) is not None:
            return [(self._literal(target.host), port)]
        if target.port is None and not self.hosts.addresses(target.host):
            srv_name = await self._naptr(target) or target.srv_name
            records = await self._query(srv_name, "SRV")
            if records is not None:
                found: list[Address] = []
                for name, srv_port in _srv_targets(records[0]):
                    try:
                        addresses, _ = await self._addresses(name)
                    except Unresolvable:
                        continue
                    found += [(address, srv_port) for address in addresses]
                if not found:
                    raise Unresolvable(f"no SRV target of {srv_name} resolves")
                return found
        addresses, _ = await self._addresses(target.host)
        return [(address, port) for address in addresses]

    async def _lookup(self, target: Target) -> tuple[Address, float]:
        port = target.port or target.default_port
        if ip_literal(target.host) is not None:
            return (self._literal(target.host), port), float("inf")
        if target.port is None and not self.hosts.addresses(target.host):
            srv_name = await self._naptr(target) or target.srv_name
            records = await self._query(srv_name, "SRV")
            if records is not None:
                return await self._srv(srv_name, *records)
        address, ttl = await self._address(target.host)
        return (address, port), ttl

    async def _naptr(self, target: Target) -> str | None:
        """The SRV name the target's NAPTR records give for our transport, if any."""
        records = await self._query(target.host, "NAPTR")
        if records is None:
            return None
        wanted = target.naptr_service.encode()
        found = [
            rr
            for rr in records[0]
            if isinstance(rr, dns.rdtypes.IN.NAPTR.NAPTR)
            and rr.flags.lower() == b"s"
            and rr.service.upper() == wanted
        ]
        found.sort(key=lambda rr: (rr.order, rr.preference))
        return found[0].replacement.to_text(omit_final_dot=True) if found else None

    async def _srv(
        self, srv_name: str, answer: dns.resolver.Answer, ttl: float
    ) -> tuple[Address, float]:
        for name, port in _srv_targets(answer):
            try:
                address, address_ttl = await self._address(name)
            except Unresolvable:
                continue
            return (address, port), min(ttl, address_ttl)
        raise Unresolvable(f"no SRV target of {srv_name} resolves")

    async def _address(self, name: str) -> tuple[str, float]:
        addresses, ttl = await self._addresses(name)
        return addresses[0], ttl

    def _literal(self, address: str) -> str:
        """An IP literal as the edge's sockets take it; Unresolvable in a family they lack."""
        if family_of(address) not in self.families:
            raise Unresolvable(f"{address}: the edge has no IPv{family_of(address)} socket")
        return socket_host(address)

    async def _addresses(self, name: str) -> tuple[list[str], float]:
        """Every address of ``name`` in the edge's families (the hosts file's, else each
        family's records, in the order of :attr:`families`)."""
        pinned = [
            socket_host(address)
            for address in self.hosts.addresses(name)
            if family_of(address) in self.families
        ]
        if pinned:
            return pinned, HOSTS_TTL_S
        found: list[str] = []
        ttl = float("inf")
        rdtypes = [RDTYPES[family] for family in self.families]
        for rdtype in rdtypes:
            records = await self._query(name, rdtype)
            if records is not None:
                found += [str(rr) for rr in records[0]]
                ttl = min(ttl, records[1])
        if not found:
            raise Unresolvable(f"{name} has no {' or '.join(rdtypes)} record")
        return found, ttl

    async def _query(self, name: str, rdtype: str) -> tuple[dns.resolver.Answer, float] | None:
        """The answer and its TTL; None when the name or the type has no records."""
        try:
            answer = await self._dns.resolve(name, rdtype, search=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return None
        except dns.exception.DNSException as exc:  # no nameserver answered, timeout …
            raise Unresolvable(f"{name} {rdtype}: {type(exc).__name__}") from None
        ttl = answer.rrset.ttl if answer.rrset is not None else 0
        return (answer, float(ttl)) if len(answer) else None


def _srv_targets(answer: dns.resolver.Answer) -> list[tuple[str, int]]:
    """The SRV records' targets and ports, lowest priority first, the heaviest first among
    equals; none after a "." target (RFC 2782: the service is not offered here)."""
    found = [rr for rr in answer if isinstance(rr, dns.rdtypes.IN.SRV.SRV)]
    found.sort(key=lambda rr: (rr.priority, -rr.weight))
    targets = []
    for rr in found:
        name = rr.target.to_text(omit_final_dot=True)
        if name in ("", "."):
            break
        targets.append((name, int(rr.port)))
    return targets


def nameserver_address(text: str) -> Address:
    """``10.0.0.2``, ``127.0.0.1:5353``, ``2001:db8::53`` or ``[2001:db8::53]:5353`` as an
    address and port; ValueError for anything else (a name cannot be its own resolver)."""
    host, sep, port = text.rpartition(":")
    if not (sep and port.isdigit() and (host.startswith("[") or ":" not in host)):
        host, port = text, "53"
    if ip_literal(host) is None or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r}: a nameserver is an IP address, with a port or not")
    return host.strip("[]"), int(port)


def _nameserver(text: str) -> dns.nameserver.Nameserver:
    return dns.nameserver.Do53Nameserver(*nameserver_address(text))
