"""SIP URIs, host:port and ;parameters (RFC 3261 §19.1, §25.1; RFC 5118 for IPv6).

Why a module of its own: routing, trunk matching, accounts and the settings
all read URIs without caring about the rest of a message, and the same
host/port and parameter grammar serves Via, Contact and Route values
(:mod:`telephony_edge.sip.header_values`). Parsing is strict and raises
``ValueError``; the message parser turns that into a 400 or a drop.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

from telephony_edge.sip.headers import TOKEN, is_digits

#: scheme ":" then no white space, angle brackets or quotes (a URI as a header carries it)
URI_SYNTAX = re.compile(r'^[A-Za-z][A-Za-z0-9+.\-]*:[^\s<>"]+$')


def parse_params(text: str) -> dict[str, str]:
    """``;a=1;b;c="x"`` → {a: 1, b: "", c: "x"} (names lower-cased)."""
    params: dict[str, str] = {}
    for part in split_outside_quotes(text, ";"):
        part = part.strip()
        if not part:
            continue
        name, eq, val = part.partition("=")
        name = name.strip().lower()
        if not name or not TOKEN.match(name):
            raise ValueError(f"bad parameter {part!r}")
        params[name] = val.strip() if eq else ""
    return params


def split_outside_quotes(text: str, sep: str) -> list[str]:
    out: list[str] = []
    quoted = False
    start = 0
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and quoted:
            i += 2
            continue
        if ch == '"':
            quoted = not quoted
        elif ch == sep and not quoted:
            out.append(text[start:i])
            start = i + 1
        i += 1
    if quoted:
        raise ValueError("unterminated quoted string")
    out.append(text[start:])
    return out


def format_params(params: dict[str, str]) -> str:
    return "".join(f";{k}={v}" if v else f";{k}" for k, v in params.items())


def parse_hostport(text: str) -> tuple[str, int | None]:
    text = text.strip()
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"bad host {text!r}")
        host, rest = text[: end + 1], text[end + 1 :]
        try:  # an IPv6reference (§25.1) holds an IPv6 address (RFC 5118 §4.10: no ":::")
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise ValueError(f"bad IPv6 reference {text!r}") from None
    else:
        host, _, port_s = text.partition(":")
        rest = ":" + port_s if _ else ""
    if not host or any(c in host for c in ' \t<>"/'):
        raise ValueError(f"bad host {text!r}")
    if not rest:
        return host, None
    if not rest.startswith(":") or not is_digits(rest[1:], 5):
        raise ValueError(f"bad port in {text!r}")
    port = int(rest[1:])
    if not 0 < port < 65536:
        raise ValueError(f"bad port in {text!r}")
    return host, port


def bracketed(host: str) -> str:
    """``host`` as a URI or a Via writes it: an IPv6 address in brackets (§25.1's
    IPv6reference, RFC 5118), anything else as it is."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def format_hostport(host: str, port: int | None) -> str:
    """``host[:port]``, an IPv6 address in brackets however it was given."""
    host = bracketed(host)
    return host if port is None else f"{host}:{port}"


@dataclass(slots=True)
class SipUri:
    scheme: str
    user: str | None
    host: str
    port: int | None = None
    params: dict[str, str] = field(default_factory=dict)
    headers: str = ""

    @classmethod
    def parse(cls, text: str) -> SipUri:
        if not URI_SYNTAX.match(text.strip()):
            raise ValueError(f"bad URI {text!r}")
        scheme, colon, rest = text.strip().partition(":")
        scheme = scheme.lower()
        if not colon or not scheme or not TOKEN.match(scheme):
            raise ValueError(f"bad URI {text!r}")
        if scheme == "tel":
            number, _, params = rest.partition(";")
            return cls(scheme, number, "", None, parse_params(params))
        if scheme not in ("sip", "sips"):
            return cls(scheme, None, rest)
        # userinfo ends at the first "@" (it may hold ? ; : , /, RFC 4475 ``intmeth``);
        # the headers after "?" are the host part's
        user: str | None = None
        if "@" in rest:
            user, _, rest = rest.partition("@")
        rest, _, headers = rest.partition("?")
        hostport, _, params = rest.partition(";")
        host, port = parse_hostport(hostport)
        return cls(scheme, user, host, port, parse_params(params), headers)

    def __str__(self) -> str:
        if self.scheme == "tel":
            return f"tel:{self.user}{format_params(self.params)}"
        if self.scheme not in ("sip", "sips"):
            return f"{self.scheme}:{self.host}"
        user = f"{self.user}@" if self.user is not None else ""
        headers = f"?{self.headers}" if self.headers else ""
        host = format_hostport(self.host, self.port)
        return f"{self.scheme}:{user}{host}{format_params(self.params)}{headers}"
