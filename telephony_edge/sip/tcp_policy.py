"""Which SIP-over-TCP connections the edge keeps (sans-I/O: connections' facts and the time in).

Theory of operation
-------------------
A TCP connection costs the edge a socket and a slot in a bounded table
(``sip.tcp_max_connections``), and anyone can open a thousand and send
nothing. Before this policy that locked every SIP-over-TCP client out until
the idle timeout (600 s). The rules, in the order they apply:

1. **Per source.** At most ``max_per_source`` inbound connections from one IP
   address, or IPv6 /64 (:mod:`~telephony_edge.sip.sources`): an attacker has
   few, a PBX needs one or a few. Beyond, a new connection is closed at once.
   A trunk's address (its CIDRs) has no such cap: some open one per call.
2. **Full table.** A new inbound connection to a full table evicts one that
   carries no live dialog: first one that never sent a complete SIP message,
   then the one idle longest. Only if every connection carries a dialog is
   the newcomer refused. So idle connections cannot lock clients out.
3. **Nothing sent.** An inbound connection that has not sent a complete SIP
   message (keep-alive pings do not count) ``first_message_timeout`` after it
   opened is closed: a client connects to send, at once.
4. **Slow.** A message started must finish within ``read_timeout``.
5. **Idle.** A connection idle for ``idle_timeout`` is closed, unless it
   carries a live dialog: the edge's BYE or refresh must find it open (RFC
   5923's connection reuse; the peer's keep-alives are welcome, not required).

Connections the edge opened itself (§18.1.1, to a peer whose connection was
gone) are never refused or evicted by rules 1-3; they carry a dialog's
requests.

Rules: pure functions over :class:`Conn` facts; no sockets, no clock.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

Address = tuple[str, int]


class Conn(Protocol):
    """What the policy reads of a connection."""

    @property
    def peer(self) -> Address: ...
    @property
    def outbound(self) -> bool: ...
    @property
    def opened_at(self) -> float: ...
    @property
    def last_activity(self) -> float: ...
    @property
    def got_message(self) -> bool: ...
    @property
    def partial_since(self) -> float | None: ...


@dataclass(frozen=True, slots=True)
class Limits:
    max_connections: int = 1000
    max_per_source: int = 32
    first_message_timeout: float = 5.0
    read_timeout: float = 10.0
    idle_timeout: float = 600.0


DEFAULT_LIMITS = Limits()


def victim(conns: Iterable[Conn], in_use: set[Address]) -> Conn | None:
    """Rule 2: the connection a newcomer to a full table replaces, or None (refuse it)."""
    candidates = [c for c in conns if not c.outbound and c.peer not in in_use]
    if not candidates:
        return None
    return min(candidates, key=lambda c: (c.got_message, c.last_activity))


def expired(conn: Conn, now: float, limits: Limits, in_use: set[Address]) -> str | None:
    """Rules 3-5: why ``conn`` is closed now (``no_message``, ``slow``, ``idle``), or None."""
    silent = not conn.outbound and not conn.got_message
    if silent and now - conn.opened_at > limits.first_message_timeout:
        return "no_message"
    if conn.partial_since is not None and now - conn.partial_since > limits.read_timeout:
        return "slow"
    if now - conn.last_activity > limits.idle_timeout and conn.peer not in in_use:
        return "idle"
    return None
