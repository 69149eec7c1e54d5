"""SIP header fields: names, the ordered header table, and the text checks (RFC 3261 §7.3, §20).

Why a module of its own: every layer (parser, transactions, dialogs, auth, NAT
rewriting) reads and writes header fields, and they all must agree on what a
name is (``v`` is ``Via``, ``call-id`` is ``Call-ID``), which headers are
comma lists (§7.3.1) and what text may be echoed back to a peer. Values stay
strings here; :mod:`telephony_edge.sip.header_values` gives them structure.
"""

from __future__ import annotations

import re

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
#: a token (§25.1): header names, methods, parameter names, transports
TOKEN = re.compile(r"^[A-Za-z0-9\-.!%*_+`'~]+$")


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
