"""What the edge's own client machines ask of the UA: look a URI up, send a request.

:class:`~telephony_edge.sip.uac.OutboundInvite` (the edge's INVITE, its ACK
and CANCEL) and :class:`~telephony_edge.sip.register.Registration` (REGISTER)
are sans-I/O: they never resolve a name or touch a socket. Both need the same
two things done, so both say so with these records, defined once; the UA's
parts (:mod:`telephony_edge.sip.ua_dial`, :mod:`telephony_edge.sip.ua_register`)
turn them into its own actions (:class:`~telephony_edge.sip.ua_records.Resolve`,
:class:`~telephony_edge.sip.ua_records.Send`), which also name the call or
account they are for.
"""

from __future__ import annotations

from dataclasses import dataclass

from telephony_edge.sip.dialog import Address


@dataclass(frozen=True, slots=True)
class Lookup:
    """Resolve ``uri`` (RFC 3263) and answer with ``resolved`` or ``unresolvable``."""

    uri: str
    transport: str


@dataclass(frozen=True, slots=True)
class SendRequest:
    """``data`` to ``dest``; ``uri`` names the host to resolve instead (a dialog's next hop)."""

    data: bytes
    dest: Address
    transport: str
    uri: str | None = None
    server_name: str | None = None  # over TLS: the name the server's certificate must carry
