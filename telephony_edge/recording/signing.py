"""Signed, expiring links to recordings: ``?expires=<unix s>&sig=<hex HMAC-SHA256>``.

The signature covers the call id and the expiry, so a link cannot be moved
to another call or kept alive longer; it is checked in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from urllib.parse import urlencode


def signature(secret: str, call_id: str, expires: int) -> str:
    message = f"{call_id}\n{expires}".encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def signed_query(secret: str, call_id: str, ttl_s: float, *, now: float | None = None) -> str:
    """The query string of a link to ``call_id``'s recording that works for ``ttl_s``."""
    expires = int((time.time() if now is None else now) + ttl_s)
    return urlencode({"expires": expires, "sig": signature(secret, call_id, expires)})


def check(
    secret: str, call_id: str, expires: str, sig: str, *, now: float | None = None
) -> str | None:
    """None if the link is valid now, else why not (for the log; the client gets 403)."""
    try:
        when = int(expires)
    except ValueError:
        return "expires is not a unix time"
    if not hmac.compare_digest(
        signature(secret, call_id, when).encode(), sig.encode(errors="replace")
    ):
        return "wrong signature"
    if when < (time.time() if now is None else now):
        return "link expired"
    return None
