"""IPv4 and IPv6 on the SIP side: which family an address is, and sockets bound in one.

Theory of operation
-------------------
A worker listens in one family (``sip.bind_host`` an IPv4 or an IPv6
address) or in both (``sip.bind_host`` IPv4 and ``sip.bind_host6``): one SIP
socket per family and transport, on the same ports, and each call's RTP and
RTCP sockets in the family of the call's media (:mod:`telephony_edge.sip.sdp`
says which: the address the offer names, else where the signalling came
from). What the edge writes to a peer (Via sent-by, Contact, the SDP's
``o=`` and ``c=``) is its advertised address in the peer's family.

IPv6 sockets are IPv6 only (``IPV6_V6ONLY``; Linux's default lets ``::``
take IPv4 too, as ``::ffff:a.b.c.d``): an IPv4 peer is met on the IPv4
socket, where the edge has an IPv4 address to advertise to it, and an IPv6
socket and an IPv4 one can hold the same port. An IPv4-mapped address that a
peer writes (RFC 5118 §4.9) is the IPv4 address it carries: sent to from the
IPv4 socket.

Rules: :func:`family_of` and :func:`socket_host` are pure and cheap (the
common IPv4 address is one ``in`` test); :func:`bound_socket` is the one
place a SIP-side socket is made.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Literal

Family = Literal[4, 6]


def family_of(host: str) -> Family:
    """6 for an IPv6 address (brackets and a zone allowed) that is not IPv4-mapped; 4 for
    an IPv4 address, an IPv4-mapped one, or a host name."""
    if ":" not in host:
        return 4
    return 4 if "." in host and socket_host(host) != _bare(host) else 6


def _bare(host: str) -> str:
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def socket_host(host: str) -> str:
    """``host`` as a socket takes it: brackets off, an IPv4-mapped IPv6 address as the IPv4
    address it carries (``[::ffff:192.0.2.1]`` → ``192.0.2.1``)."""
    bare = _bare(host)
    if "." in bare and ":" in bare:
        try:
            mapped = ipaddress.IPv6Address(bare).ipv4_mapped
        except ValueError:
            return bare
        return str(mapped) if mapped is not None else bare
    return bare


def bound_socket(host: str, port: int) -> socket.socket:
    """A non-blocking UDP socket bound to ``host:port``; IPv6 only when ``host`` is IPv6."""
    six = family_of(host) == 6
    sock = socket.socket(socket.AF_INET6 if six else socket.AF_INET, socket.SOCK_DGRAM)
    try:
        if six:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((_bare(host), port))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock
