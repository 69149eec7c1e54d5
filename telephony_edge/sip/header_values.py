"""Structured header values: Via, name-addr (From/To/Contact/Route) and CSeq (RFC 3261 §20, §25.1).

Why apart from :mod:`telephony_edge.sip.headers`: the header table keeps values
as the peer wrote them (so a 400 can echo them byte for byte); these records
are what the transaction and dialog layers reason with, parsed on demand and
written back with ``str()``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from telephony_edge.sip.headers import TOKEN, is_digits
from telephony_edge.sip.uri import (
    URI_SYNTAX,
    SipUri,
    format_hostport,
    format_params,
    parse_hostport,
    parse_params,
)

_DISPLAY = re.compile(r'^(?:"(?:[^"\\]|\\.)*"|[^"<>]+)$')
#: sent-protocol and sent-by, LWS allowed around each ``/`` (§25.1 SLASH)
_VIA = re.compile(r"^([^\s/]+)\s*/\s*([^\s/]+)\s*/\s*([^\s/;]+)\s+([^;]*)(;.*)?$", re.DOTALL)


def _find_unquoted(text: str, ch: str) -> int:
    """The index of the first ``ch`` outside a quoted string, or -1."""
    quoted = False
    i = 0
    while i < len(text):
        c = text[i]
        if quoted and c == "\\":
            i += 2
            continue
        if c == '"':
            quoted = not quoted
        elif c == ch and not quoted:
            return i
        i += 1
    return -1


@dataclass(slots=True)
class Via:
    transport: str
    host: str
    port: int | None
    params: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> Via:
        m = _VIA.match(text.strip())
        if m is None or m[1].upper() != "SIP" or not TOKEN.match(m[3]):
            raise ValueError(f"bad Via {text!r}")
        host, port = parse_hostport(m[4])
        return cls(m[3].upper(), host, port, parse_params(m[5] or ""))

    @property
    def branch(self) -> str | None:
        return self.params.get("branch")

    @property
    def sent_by(self) -> str:
        return format_hostport(self.host.lower(), self.port or 5060)

    def __str__(self) -> str:
        return f"SIP/2.0/{self.transport} {format_hostport(self.host, self.port)}" + format_params(
            self.params
        )


@dataclass(slots=True)
class NameAddr:
    """From/To/Contact/Route/Record-Route value: display name, URI, header params."""

    uri: str
    display: str = ""
    params: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> NameAddr:
        text = text.strip()
        lt = _find_unquoted(text, "<")  # a quoted display name may hold one
        if lt >= 0:
            gt = text.find(">", lt)
            if gt < 0:
                raise ValueError(f"unclosed < in {text!r}")
            display = text[:lt].strip()
            uri = text[lt + 1 : gt].strip()
            params = parse_params(text[gt + 1 :])
        else:
            # addr-spec without brackets: parameters after ';' belong to the header
            uri, _, rest = text.partition(";")
            uri, display, params = uri.strip(), "", parse_params(rest)
        if not URI_SYNTAX.match(uri):
            raise ValueError(f"bad URI in {text!r}")
        if display and not _DISPLAY.match(display):
            raise ValueError(f"bad display name in {text!r}")
        return cls(uri, display, params)

    @property
    def tag(self) -> str | None:
        return self.params.get("tag")

    def sip_uri(self) -> SipUri:
        return SipUri.parse(self.uri)

    def __str__(self) -> str:
        display = f"{self.display} " if self.display else ""
        return f"{display}<{self.uri}>{format_params(self.params)}"


@dataclass(frozen=True, slots=True)
class CSeq:
    seq: int
    method: str

    @classmethod
    def parse(cls, text: str) -> CSeq:
        parts = text.split()
        if len(parts) != 2 or not is_digits(parts[0]) or not TOKEN.match(parts[1]):
            raise ValueError(f"bad CSeq {text!r}")
        seq = int(parts[0])
        if seq >= 2**31:
            raise ValueError(f"CSeq number too large {text!r}")
        return cls(seq, parts[1])

    def __str__(self) -> str:
        return f"{self.seq} {self.method}"
