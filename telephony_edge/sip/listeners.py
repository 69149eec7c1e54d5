"""The SIP endpoint's sockets, bound: UDP and TCP on one port per address family, and TLS.

Why a module of its own: which port, which family, what to do when a port is
taken in one family but free in the other, and which certificate and trust
store TLS uses are start-up questions, answered once;
:class:`~telephony_edge.sip.transport.SipEndpoint` only keeps what they
return and carries the UA's traffic over it. With ``sip.port: 0`` the UDP
sockets of every family and the TCP listener must share one free port, so
the whole set is tried again on another when any of them is refused; a
configured port must be free for all of them. A TLS certificate that does
not load, or a TLS port taken, is the operator's error (:class:`UserError`)
and stops the start.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from telephony_edge.errors import UserError, os_reason
from telephony_edge.sip import tcp_policy
from telephony_edge.sip.family import Family, bound_socket, family_of
from telephony_edge.sip.settings import SipSettings
from telephony_edge.sip.tcp import TcpSide
from telephony_edge.sip.tls import Certificate, TlsConfig, TlsSide, client_context

BIND_ATTEMPTS = 20

Address = tuple[str, int]


@dataclass(frozen=True, slots=True)
class StreamHooks:
    """What a TCP or TLS side calls back into the endpoint, and its connections' limits."""

    receive: Callable[[bytes, Address, str], None]  # a framed message, its peer, "TCP"/"TLS"
    dialogs: Callable[[], dict[Address, Address]]  # live calls' connection → dialog target
    trusted: Callable[[str], bool]  # a source address that is one of the trunks
    policy: tcp_policy.Limits


@dataclass(slots=True)
class BoundSockets:
    """UDP per family and, with ``sip.tcp``, the TCP side, all on ``port``."""

    udp: dict[Family, asyncio.DatagramTransport]
    port: int
    tcp: TcpSide | None


async def bind_udp_and_tcp(
    protocol: asyncio.DatagramProtocol, settings: SipSettings, hooks: StreamHooks
) -> BoundSockets:
    """UDP, and TCP on the same port, on the address of each family; with ``port: 0``,
    a port free for all of them."""
    hosts = tuple(settings.bind_hosts.values())
    for _ in range(BIND_ATTEMPTS):
        udp: dict[Family, asyncio.DatagramTransport] = {}
        try:
            port = await _bind_udp(protocol, udp, hosts, settings.port)
            tcp = None
            if settings.tcp:
                tcp = TcpSide(
                    lambda data, peer: hooks.receive(data, peer, "TCP"),
                    policy=hooks.policy,
                    dialogs=hooks.dialogs,
                    trusted=hooks.trusted,
                )
                await tcp.start(hosts, port)
            return BoundSockets(udp, port, tcp)
        except OSError:
            for transport in udp.values():
                transport.close()
            if settings.port:  # a configured port: it must be free for all
                raise
            # that port is taken in the other family or for TCP: another one
    raise OSError(f"no port free for SIP on {' and '.join(hosts)} in {BIND_ATTEMPTS} tries")


async def _bind_udp(
    protocol: asyncio.DatagramProtocol,
    udp: dict[Family, asyncio.DatagramTransport],
    hosts: tuple[str, ...],
    port: int,
) -> int:
    """A UDP socket on each address (IPv6 ones IPv6 only), the first one's port for
    the others; each goes into ``udp`` as it is bound. The port bound."""
    loop = asyncio.get_running_loop()
    bound = port
    for host in hosts:
        sock = bound_socket(host, bound if udp else port)
        transport, _ = await loop.create_datagram_endpoint(lambda: protocol, sock=sock)
        udp[family_of(host)] = transport
        bound = int(sock.getsockname()[1])
    return bound


async def open_tls(settings: SipSettings, hooks: StreamHooks) -> TlsSide:
    """SIP over TLS (sip/tls.py): our own connections always (verified against the
    system's trust store or ``sip.tls_ca_file``); a listener on ``sip.tls_port`` with
    ``sip.tls``. A certificate that does not load, or a port taken, stops the start."""
    certificate = None
    if settings.tls:
        assert settings.tls_certificate and settings.tls_private_key  # validated
        try:
            certificate = Certificate(settings.tls_certificate, settings.tls_private_key)
        except (OSError, ValueError) as exc:
            why = f"{type(exc).__name__}: {exc}"[:200]
            raise UserError(f"sip.tls_certificate / sip.tls_private_key: {why}") from None
    try:
        client = client_context(settings.tls_ca_file)
    except (OSError, ValueError) as exc:
        raise UserError(f"sip.tls_ca_file: {type(exc).__name__}: {exc}"[:250]) from None
    tls = TlsSide(
        lambda data, peer: hooks.receive(data, peer, "TLS"),
        TlsConfig(certificate, client, settings.tls_handshake_timeout_s),
        policy=hooks.policy,
        dialogs=hooks.dialogs,
        trusted=hooks.trusted,
    )
    try:
        hosts = tuple(settings.bind_hosts.values())
        await tls.start(hosts, settings.tls_port, listen=certificate is not None)
    except OSError as exc:
        await tls.stop()
        where = f"{' and '.join(hosts)} port {settings.tls_port}: {os_reason(exc)}"
        raise UserError(f"cannot listen for SIP over TLS on {where}") from None
    return tls
