"""Signed, short-lived tokens that let a network's media socket attach to a call.

Shared by the networks whose media comes over a WebSocket the network does not
sign (Twilio's Media Streams, Vonage's audio socket); Twilio's case:

The voice webhook is signed by Twilio, the Media Streams WebSocket is not:
anyone who can reach ``/twilio/stream`` could otherwise open a stream and
talk to an agent. So the TwiML that starts a stream carries a token the edge
signed itself, bound to a *subject* (the call id, or for a hand-off to another
region the call's identity) and an expiry. Only streams the edge issued can
attach, and only for a short while.

The key is derived from the account's auth token (HMAC with a fixed label),
so every worker and every region of one Twilio account can check the tokens
of any other without another shared secret, and the raw auth token never
signs anything but Twilio's own webhooks.

Format: ``<expiry unix seconds>.<base64url(HMAC-SHA256(key, subject "|" expiry))>``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from dataclasses import dataclass

_LABEL = b"telephony-edge/twilio-stream-token/v1"


class TokenError(ValueError):
    """The token is malformed, forged, bound to another subject, or expired."""


@dataclass(frozen=True, slots=True)
class StreamTokens:
    """Issues and checks stream tokens with a key derived from ``secret``."""

    key: bytes
    ttl_s: float

    @classmethod
    def from_auth_token(cls, auth_token: str, ttl_s: float) -> StreamTokens:
        key = hmac.new(auth_token.encode("utf-8"), _LABEL, hashlib.sha256).digest()
        return cls(key=key, ttl_s=ttl_s)

    def issue(self, subject: str, now: float | None = None) -> str:
        """A token for ``subject`` valid for ``ttl_s`` from ``now``."""
        expiry = int((time.time() if now is None else now) + self.ttl_s + 0.999)
        return f"{expiry}.{self._mac(subject, expiry).decode()}"

    def verify(self, token: str, subject: str, now: float | None = None) -> None:
        """Raise :class:`TokenError` unless ``token`` was issued for ``subject`` and is live."""
        expiry_text, dot, mac = token.partition(".")
        if not dot or not expiry_text.isdigit() or len(expiry_text) > 12:
            raise TokenError("malformed stream token")
        expiry = int(expiry_text)
        if not hmac.compare_digest(mac.encode("ascii", "replace"), self._mac(subject, expiry)):
            raise TokenError("stream token signature does not match")
        if (time.time() if now is None else now) > expiry:
            raise TokenError("stream token expired")

    def _mac(self, subject: str, expiry: int) -> bytes:
        msg = f"{subject}|{expiry}".encode()
        digest = hmac.new(self.key, msg, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=")
