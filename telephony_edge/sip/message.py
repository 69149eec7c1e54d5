"""SIP messages: strict, bounded parsing and serialising (RFC 3261 §7, §20, §25).

Rules
-----
* :func:`parse_message` takes ONE whole message (a UDP datagram, or a frame
  cut by a stream transport) and returns a :class:`Request` or a
  :class:`Response`, or raises :class:`ParseError`. It never raises anything
  else, whatever the bytes.
* Bounds come first (:class:`Limits`): total size, header count, length of
  each header line (raw and unfolded). Over a bound the message is dropped:
  a peer that sends 64 KiB of headers is not owed an answer.
* A :class:`ParseError` says what the UA may do with it: ``status`` is 400
  (malformed), 505 (a SIP version other than 2.0) or 416 (a Request-URI scheme
  that is not sip/sips/tel) when ``request`` holds enough of the message
  (Via, From, To, Call-ID, CSeq) for :func:`build_response`; ``status`` is
  None when the packet must be dropped (responses, ACKs, garbage).
* Header names are case-insensitive and compact forms (``v``, ``f``, ``t``,
  ``i``, ``m``, ``l``, ``c``, ``k``, ``s`` …) are expanded on the way in;
  folded lines (continuations starting with SP/HT) are joined; headers of
  the comma-list kind (Via, Route, Contact, Allow, Supported, Require …) are
  split into values outside quotes and angle brackets.
* Content-Length must not promise more than the message holds (→ 400); bytes
  after the declared body are discarded (§18.3: a datagram may carry more,
  RFC 4475 ``dblreq``; a stream transport cuts frames by Content-Length).
* The grammar's LWS is taken where §25 allows it: around the ``/`` of a Via's
  sent-protocol and around ``;`` and ``=``, leading zeros in numbers, quoted
  pairs (``\\x00`` too) in quoted strings (RFC 4475 ``wsinv``, ``intmeth``).
* A request whose top Via, From, To, Call-ID and CSeq parse is answered 400
  for any other fault: a bad request line (LWS in the Request-URI, extra SP),
  a later Via that does not parse, From/To/Call-ID/CSeq/Max-Forwards given
  twice (RFC 4475 §3.1.2.1, §3.1.2.8-10, §3.3.8).
* Text is UTF-8; bytes that are not are carried with ``surrogateescape`` so
  that a 400 can still echo the peer's headers byte for byte.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

SIP_VERSION = "SIP/2.0"
MAGIC_COOKIE = "z9hG4bK"
ENCODING = "utf-8"
ERRORS = "surrogateescape"


@dataclass(frozen=True, slots=True)
class Limits:
    max_message_bytes: int = 65_535
    max_headers: int = 100
    max_header_line: int = 8_192


DEFAULT_LIMITS = Limits()


class ParseError(Exception):
    """A message that cannot be taken as it is; see the module docstring."""

    def __init__(
        self, reason: str, status: int | None = None, request: Request | None = None
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.request = request

    @property
    def answerable(self) -> bool:
        return self.status is not None and self.request is not None


# -- header names ---------------------------------------------------------------

COMPACT: dict[str, str] = {
    "a": "Accept-Contact",
    "b": "Referred-By",
    "c": "Content-Type",
    "d": "Request-Disposition",
    "e": "Content-Encoding",
    "f": "From",
    "i": "Call-ID",
    "j": "Reject-Contact",
    "k": "Supported",
    "l": "Content-Length",
    "m": "Contact",
    "o": "Event",
    "r": "Refer-To",
    "s": "Subject",
    "t": "To",
    "u": "Allow-Events",
    "v": "Via",
    "x": "Session-Expires",
    "y": "Identity",
}

_CANONICAL = [
    "Accept", "Allow", "Allow-Events", "Authorization", "Call-ID", "Contact",
    "Content-Disposition", "Content-Encoding", "Content-Length", "Content-Type", "CSeq",
    "Event", "Expires", "From", "Max-Forwards", "Min-SE", "Proxy-Authenticate",
    "Proxy-Authorization", "Proxy-Require", "Record-Route", "Refer-To", "Referred-By",
    "Require", "Retry-After", "Route", "RSeq", "RAck", "Server", "Session-Expires",
    "Subject", "Subscription-State", "Supported", "Timestamp", "To", "Unsupported",
    "User-Agent", "Via", "Warning", "WWW-Authenticate",
]  # fmt: skip
CANONICAL: dict[str, str] = {name.lower(): name for name in _CANONICAL}
CANONICAL.update({k: v for k, v in COMPACT.items()})

#: headers whose values are comma-separated lists (RFC 3261 §7.3.1)
LIST_HEADERS = frozenset(
    {
        "via", "route", "record-route", "contact", "allow", "supported", "require",
        "unsupported", "proxy-require", "accept", "accept-encoding", "accept-language",
        "allow-events", "content-encoding",
    }
)  # fmt: skip

#: NUL, other controls but HT, and bytes that were not UTF-8 (surrogate-escaped)
_BAD_TEXT = re.compile("[\x00-\x08\x0a-\x1f\x7f\udc80-\udcff]")
#: a quoted-string (§25.1): qdtext, or a quoted-pair, which may escape a control
#: (RFC 4475 ``intmeth``: ``"BEL:\<0x07> NUL:\<0x00> DEL:\<0x7f>"``), not CR or LF
_QUOTED_STRING = re.compile(
    '"(?:[^"\\\\\x00-\x08\x0a-\x1f\x7f\udc80-\udcff]|\\\\[\x00-\x09\x0b\x0c\x0e-\x7f])*"'
)
#: what a response copies from the request (§8.2.6): must be clean to be echoed
_ECHOED = ("Via", "From", "To", "Call-ID", "CSeq", "Timestamp")
_URI = re.compile(r'^[A-Za-z][A-Za-z0-9+.\-]*:[^\s<>"]+$')
_DISPLAY = re.compile(r'^(?:"(?:[^"\\]|\\.)*"|[^"<>]+)$')
_TOKEN = re.compile(r"^[A-Za-z0-9\-.!%*_+`'~]+$")
_VERSION = re.compile(r"^SIP/(\d+)\.(\d+)$", re.IGNORECASE)
#: sent-protocol and sent-by, LWS allowed around each ``/`` (§25.1 SLASH)
_VIA = re.compile(r"^([^\s/]+)\s*/\s*([^\s/]+)\s*/\s*([^\s/;]+)\s+([^;]*)(;.*)?$", re.DOTALL)
#: header fields of which a request carries exactly one (§20; RFC 4475 ``multi01``)
_SINGLE = ("From", "To", "Call-ID", "CSeq", "Max-Forwards")


def has_bad_text(text: str) -> bool:
    """A control character, NUL or non-UTF-8 byte outside a quoted-pair."""
    if _BAD_TEXT.search(text) is None:
        return False
    return _BAD_TEXT.search(_QUOTED_STRING.sub('""', text)) is not None


def is_digits(text: str, max_len: int = 10) -> bool:
    """ASCII digits only, at most ``max_len`` of them.

    ``str.isdigit`` is True for ``²`` or ``٣`` too, and ``int()`` refuses
    some of them: every number read from the wire goes through this first.
    """
    return 0 < len(text) <= max_len and text.isascii() and text.isdigit()


def canonical_name(name: str) -> str:
    """``v`` → ``Via``, ``call-id`` → ``Call-ID``; unknown names as written."""
    return CANONICAL.get(name.lower(), name)


def split_list(value: str) -> list[str]:
    """Split a comma-list header value outside quotes and angle brackets."""
    out: list[str] = []
    depth = 0
    quoted = False
    start = 0
    i = 0
    while i < len(value):
        ch = value[i]
        if quoted:
            if ch == "\\":
                i += 1
            elif ch == '"':
                quoted = False
        elif ch == '"':
            quoted = True
        elif ch == "<":
            depth += 1
        elif ch == ">":
            depth = max(0, depth - 1)
        elif ch == "," and depth == 0:
            out.append(value[start:i].strip())
            start = i + 1
        i += 1
    out.append(value[start:].strip())
    return [v for v in out if v]


class Headers:
    """Ordered (canonical name, value) pairs; lookups are case-insensitive."""

    __slots__ = ("_items",)

    def __init__(self, items: list[tuple[str, str]] | None = None) -> None:
        self._items: list[tuple[str, str]] = [(canonical_name(n), v) for n, v in items or []]

    def items(self) -> list[tuple[str, str]]:
        return list(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def get(self, name: str) -> str | None:
        """The first value (the first list element for list headers)."""
        values = self.get_all(name)
        return values[0] if values else None

    def get_all(self, name: str) -> list[str]:
        key = canonical_name(name).lower()
        out: list[str] = []
        for n, v in self._items:
            if n.lower() == key:
                out.extend(split_list(v) if key in LIST_HEADERS else [v])
        return out

    def raw(self, name: str) -> list[tuple[str, str]]:
        key = canonical_name(name).lower()
        return [(n, v) for n, v in self._items if n.lower() == key]

    def add(self, name: str, value: str) -> None:
        self._items.append((canonical_name(name), value))

    def set(self, name: str, value: str) -> None:
        """Replace every value of ``name`` by ``value`` (at the first one's place)."""
        key = canonical_name(name).lower()
        for i, (n, _) in enumerate(self._items):
            if n.lower() == key:
                self._items[i] = (canonical_name(name), value)
                self._items[i + 1 :] = [p for p in self._items[i + 1 :] if p[0].lower() != key]
                return
        self.add(name, value)

    def remove(self, name: str) -> None:
        key = canonical_name(name).lower()
        self._items = [p for p in self._items if p[0].lower() != key]

    def copy(self) -> Headers:
        h = Headers()
        h._items = list(self._items)
        return h


# -- structured header values ---------------------------------------------------


def parse_params(text: str) -> dict[str, str]:
    """``;a=1;b;c="x"`` → {a: 1, b: "", c: "x"} (names lower-cased)."""
    params: dict[str, str] = {}
    for part in split_outside_quotes(text, ";"):
        part = part.strip()
        if not part:
            continue
        name, eq, val = part.partition("=")
        name = name.strip().lower()
        if not name or not _TOKEN.match(name):
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
class Via:
    transport: str
    host: str
    port: int | None
    params: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> Via:
        m = _VIA.match(text.strip())
        if m is None or m[1].upper() != "SIP" or not _TOKEN.match(m[3]):
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
class SipUri:
    scheme: str
    user: str | None
    host: str
    port: int | None = None
    params: dict[str, str] = field(default_factory=dict)
    headers: str = ""

    @classmethod
    def parse(cls, text: str) -> SipUri:
        if not _URI.match(text.strip()):
            raise ValueError(f"bad URI {text!r}")
        scheme, colon, rest = text.strip().partition(":")
        scheme = scheme.lower()
        if not colon or not scheme or not _TOKEN.match(scheme):
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
        if not _URI.match(uri):
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
        if len(parts) != 2 or not is_digits(parts[0]) or not _TOKEN.match(parts[1]):
            raise ValueError(f"bad CSeq {text!r}")
        seq = int(parts[0])
        if seq >= 2**31:
            raise ValueError(f"CSeq number too large {text!r}")
        return cls(seq, parts[1])

    def __str__(self) -> str:
        return f"{self.seq} {self.method}"


# -- messages ---------------------------------------------------------------------


@dataclass(slots=True)
class _Message:
    headers: Headers
    body: bytes

    def top_via(self) -> Via:
        value = self.headers.get("Via")
        if value is None:
            raise ValueError("no Via")
        return Via.parse(value)

    def vias(self) -> list[Via]:
        return [Via.parse(v) for v in self.headers.get_all("Via")]

    def from_(self) -> NameAddr:
        return NameAddr.parse(self._required("From"))

    def to(self) -> NameAddr:
        return NameAddr.parse(self._required("To"))

    def call_id(self) -> str:
        return self._required("Call-ID").strip()

    def cseq(self) -> CSeq:
        return CSeq.parse(self._required("CSeq"))

    def _required(self, name: str) -> str:
        value = self.headers.get(name)
        if value is None:
            raise ValueError(f"no {name}")
        return value

    def _head_bytes(self, start: str) -> bytes:
        lines = [start]
        for name, value in self.headers.items():
            if name.lower() != "content-length":
                lines.append(f"{name}: {value}")
        lines.append(f"Content-Length: {len(self.body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode(ENCODING, ERRORS)


@dataclass(slots=True)
class Request(_Message):
    method: str
    uri: str
    version: str = SIP_VERSION

    def to_bytes(self) -> bytes:
        return self._head_bytes(f"{self.method} {self.uri} {self.version}") + self.body


@dataclass(slots=True)
class Response(_Message):
    status: int
    reason: str
    version: str = SIP_VERSION

    def to_bytes(self) -> bytes:
        return self._head_bytes(f"{self.version} {self.status} {self.reason}") + self.body


Message = Request | Response


def make_request(
    method: str, uri: str, headers: list[tuple[str, str]], body: bytes = b""
) -> Request:
    return Request(headers=Headers(headers), body=body, method=method, uri=uri)


# -- parsing ---------------------------------------------------------------------


def _split_head(data: bytes) -> tuple[bytes, bytes, bool]:
    """(head, body, had_blank_line)."""
    crlf = data.find(b"\r\n\r\n")
    lf = data.find(b"\n\n")
    if crlf >= 0 and (lf < 0 or crlf < lf):
        return data[:crlf], data[crlf + 4 :], True
    if lf >= 0:
        return data[:lf], data[lf + 2 :], True
    return data, b"", False


def _lines(head: str, limits: Limits) -> list[str]:
    raw = head.split("\n")
    out: list[str] = []
    for line in raw:
        line = line.removesuffix("\r")
        if len(line) > limits.max_header_line:
            raise ParseError("header line too long")
        if line[:1] in (" ", "\t") and out:
            out[-1] = out[-1].rstrip() + " " + line.strip()  # folding (§7.3.1)
            if len(out[-1]) > limits.max_header_line:
                raise ParseError("folded header too long")
        else:
            out.append(line)
        if len(out) > limits.max_headers + 1:
            raise ParseError("too many headers")
    return out


def _check_essentials(req: Request) -> None:
    """Raise ValueError unless a response can be built for ``req``."""
    if any(not split_list(v) for _, v in req.headers.raw("Via")):
        raise ValueError("no Via, or an empty one")
    req.top_via()  # where the response goes; a later Via's fault is a 400
    req.from_()
    req.to()
    if not req.call_id():
        raise ValueError("empty Call-ID")
    req.cseq()


def parse_message(data: bytes, limits: Limits = DEFAULT_LIMITS) -> Message:
    """Parse one whole SIP message; see the module docstring for the rules."""
    if len(data) > limits.max_message_bytes:
        raise ParseError("message too large")
    data = data.lstrip(b"\r\n")
    if not data:
        raise ParseError("empty (keep-alive)")
    head_b, body, had_blank = _split_head(data)
    head = head_b.decode(ENCODING, ERRORS)
    lines = _lines(head, limits)
    bad_text = any(has_bad_text(line) for line in lines)
    start = lines[0]

    # header lines (problems noted, parsing goes on so that a 400 is possible)
    problems: list[str] = []
    items: list[tuple[str, str]] = []
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        name = name.strip()
        if not colon or not name or not _TOKEN.match(name):
            problems.append(f"bad header line {line[:40]!r}")
            continue
        items.append((name, value.strip()))
    headers = Headers(items)

    parts = start.split(" ", 2)
    if start.startswith("SIP/"):
        # a response: never answered, so every problem is a drop
        if len(parts) < 2 or not (len(parts[1]) == 3 and is_digits(parts[1])):
            raise ParseError("bad status line")
        if parts[0].upper() != SIP_VERSION:
            raise ParseError("unsupported SIP version in a response")
        status = int(parts[1])
        if not 100 <= status <= 699:
            raise ParseError("bad status code")
        resp = Response(headers, b"", status, parts[2] if len(parts) > 2 else "")
        if problems or bad_text or not had_blank:
            raise ParseError(problems[0] if problems else "malformed response")
        try:
            resp.top_via()
            resp.from_()
            resp.to()
            resp.call_id()
            resp.cseq()
        except ValueError as exc:
            raise ParseError(str(exc)) from None
        resp.body = _body(headers, body, limits, None)
        return resp

    if len(parts) != 3 or not _TOKEN.match(parts[0]) or not parts[1] or " " in parts[2]:
        # LWS in the Request-URI, SP doubled or trailing (RFC 4475 §3.1.2.8-10): a
        # 400 when the rest is sound, the method first and a version last
        words = start.split()
        if len(words) < 3 or not _TOKEN.match(words[0]) or not _VERSION.match(words[-1]):
            raise ParseError("bad request line")
        problems.insert(0, "bad request line")
        parts = [words[0], " ".join(words[1:-1]), words[-1]]
    method, uri, version = parts
    req = Request(headers, b"", method, uri, version)
    try:
        _check_essentials(req)
        for name in _ECHOED:
            if any(has_bad_text(v) for _, v in headers.raw(name)):
                raise ValueError(f"invalid characters in {name}")  # cannot be echoed
        answerable: Request | None = req if method != "ACK" else None
    except ValueError as exc:
        problems.insert(0, str(exc))
        answerable = None
    if answerable is not None:
        twice = [name for name in _SINGLE if len(headers.raw(name)) > 1]
        if twice:
            problems.append(f"{twice[0]} given more than once")
        try:
            req.vias()
        except ValueError as exc:
            problems.append(str(exc))

    m = _VERSION.match(version)
    if m is None:
        raise ParseError("bad SIP version", 400, answerable)
    if version.upper() != SIP_VERSION:
        raise ParseError(f"unsupported version {version}", 505, answerable)
    if problems:
        raise ParseError(problems[0], 400, answerable)
    if bad_text:
        raise ParseError("invalid UTF-8 or control character in the header", 400, answerable)
    if not had_blank:
        raise ParseError("no blank line after the header", 400, answerable)
    try:
        if req.cseq().method != method:
            raise ValueError("CSeq method does not match the request method")
        mf = headers.get("Max-Forwards")
        if mf is not None and not is_digits(mf.lstrip("0") or "0", 3):  # 0068: 68
            raise ValueError("bad Max-Forwards")
        SipUri.parse(uri)
    except ValueError as exc:
        raise ParseError(str(exc), 400, answerable) from None
    if uri.partition(":")[0].lower() not in ("sip", "sips", "tel"):
        raise ParseError("unsupported URI scheme", 416, answerable)
    req.body = _body(headers, body, limits, answerable)
    return req


def _body(headers: Headers, body: bytes, limits: Limits, req: Request | None) -> bytes:
    values = headers.get_all("Content-Length")
    if not values:
        return body  # allowed over UDP: the body is the rest of the datagram
    if len(set(values)) != 1 or not is_digits(values[0], 6):
        raise ParseError("bad Content-Length", 400, req)
    length = int(values[0])
    if len(body) < length:
        raise ParseError("body shorter than Content-Length", 400, req)
    return body[:length]  # §18.3: what a datagram carries past the body is discarded


# -- responses ------------------------------------------------------------------------

REASONS: dict[int, str] = {
    100: "Trying",
    180: "Ringing",
    183: "Session Progress",
    200: "OK",
    202: "Accepted",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    415: "Unsupported Media Type",
    416: "Unsupported URI Scheme",
    420: "Bad Extension",
    480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist",
    482: "Loop Detected",
    483: "Too Many Hops",
    486: "Busy Here",
    487: "Request Terminated",
    488: "Not Acceptable Here",
    491: "Request Pending",
    500: "Server Internal Error",
    501: "Not Implemented",
    503: "Service Unavailable",
    505: "Version Not Supported",
}


def build_response(
    request: Request,
    code: int,
    reason: str | None = None,
    extra_headers: list[tuple[str, str]] | None = None,
    body: bytes = b"",
    *,
    to_tag: str | None = None,
) -> Response:
    """A response to ``request`` per §8.2.6: Via (all, in order), From, To, Call-ID
    and CSeq copied; a To tag added when missing (except on 100); Record-Route
    copied on dialog-creating responses (§12.1.1)."""
    headers = Headers()
    for name, value in request.headers.raw("Via"):
        headers.add(name, value)
    for name in ("From", "To", "Call-ID", "CSeq"):
        copied = request.headers.get(name)
        if copied is not None:
            headers.add(name, copied)
    if code != 100 and to_tag:
        to = request.to()
        if to.tag is None:
            to.params["tag"] = to_tag
            headers.set("To", str(to))
    if code == 100:
        ts = request.headers.get("Timestamp")
        if ts is not None:
            headers.add("Timestamp", ts)
    if 100 < code < 300 and request.method == "INVITE":
        for name, value in request.headers.raw("Record-Route"):
            headers.add(name, value)
    for name, value in extra_headers or []:
        headers.add(name, value)
    return Response(headers, body, code, reason or REASONS.get(code, "Unknown"))
