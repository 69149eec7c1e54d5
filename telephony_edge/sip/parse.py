"""SIP message parsing: strict and bounded (RFC 3261 §7, §20, §25).

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

The records it returns are :mod:`telephony_edge.sip.message`'s.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from telephony_edge.sip.headers import TOKEN, Headers, has_bad_text, is_digits, split_list
from telephony_edge.sip.message import ENCODING, ERRORS, SIP_VERSION, Message, Request, Response
from telephony_edge.sip.uri import SipUri


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


#: what a response copies from the request (§8.2.6): must be clean to be echoed
_ECHOED = ("Via", "From", "To", "Call-ID", "CSeq", "Timestamp")
_VERSION = re.compile(r"^SIP/(\d+)\.(\d+)$", re.IGNORECASE)
#: header fields of which a request carries exactly one (§20; RFC 4475 ``multi01``)
_SINGLE = ("From", "To", "Call-ID", "CSeq", "Max-Forwards")


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
        if not colon or not name or not TOKEN.match(name):
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

    if len(parts) != 3 or not TOKEN.match(parts[0]) or not parts[1] or " " in parts[2]:
        # LWS in the Request-URI, SP doubled or trailing (RFC 4475 §3.1.2.8-10): a
        # 400 when the rest is sound, the method first and a version last
        words = start.split()
        if len(words) < 3 or not TOKEN.match(words[0]) or not _VERSION.match(words[-1]):
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
