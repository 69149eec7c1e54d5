"""What counts as one source for the SIP side's per-source limits.

Request rates (:mod:`~telephony_edge.sip.ratelimit`), TCP connections
(:mod:`~telephony_edge.sip.tcp_policy`) and digest failures
(:mod:`~telephony_edge.sip.auth_guard`) are counted per source. An IPv4
address is one; an IPv6 address is counted by its /64, the prefix one
subscriber or host gets (RFC 6177): whoever holds a /64 has 2**64 addresses
to rotate through for free, so a limit per IPv6 address limits nothing. An
IPv4-mapped IPv6 address is its IPv4 address.
"""

from __future__ import annotations

import ipaddress


def source_key(address: str) -> str:
    """The key ``address`` is counted under (see the module docstring)."""
    if ":" not in address:
        return address  # IPv4 (or a name): as it is, without parsing on the hot path
    try:
        ip = ipaddress.IPv6Address(address.strip("[]").split("%")[0])
    except ValueError:
        return address
    if ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))
