"""SIP messages as records, and the building of responses (RFC 3261 §7, §8.2.6).

A :class:`Request` or :class:`Response` is a start line, a
:class:`~telephony_edge.sip.headers.Headers` table and a body; structured
values (Via, From, To, CSeq) are parsed from the table when asked, so a
message read off the wire is never rewritten by accident. ``to_bytes`` always
writes a Content-Length that matches the body. Reading bytes into these
records is :mod:`telephony_edge.sip.parse`'s job.

Text is UTF-8; bytes that are not are carried with ``surrogateescape`` so
that a 400 can still echo the peer's headers byte for byte.
"""

from __future__ import annotations

from dataclasses import dataclass

from telephony_edge.sip.header_values import CSeq, NameAddr, Via
from telephony_edge.sip.headers import Headers

SIP_VERSION = "SIP/2.0"
MAGIC_COOKIE = "z9hG4bK"
ENCODING = "utf-8"
ERRORS = "surrogateescape"


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
