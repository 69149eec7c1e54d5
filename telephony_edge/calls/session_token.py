"""Tokens that bind a continued session to whoever was given it.

Why: a session (its chat, metadata and agent config) is continued by naming
its ``session_id``. With the private key that is the operator's own server
asking. With the public key it is any browser, so a session id alone would
let a stranger who learns one (from a log, a URL, a shared screen) read a
victim's conversation through the agent and append to it. Each call's
answer therefore carries a token the edge signs for its session and agent;
a public-key request continues a session only with that token.

The token is an HMAC-SHA256 over ``agent_id`` and ``session_id`` under a key
derived from ``api.private_key`` (the same on every worker), compared in
constant time. Without a private key there is no secret, and no session can
be continued with the public key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

_CONTEXT = b"telephony-edge session token v1"


def _key(private_key: str) -> bytes:
    return hmac.new(private_key.encode(), _CONTEXT, hashlib.sha256).digest()


def session_token(private_key: str | None, agent_id: str, session_id: str) -> str | None:
    """The token for ``session_id`` of ``agent_id``; None when there is no key to sign with."""
    if not private_key:
        return None
    message = f"{agent_id}\n{session_id}".encode()
    digest = hmac.new(_key(private_key), message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def token_matches(
    private_key: str | None, agent_id: str, session_id: str, token: str | None
) -> bool:
    """Whether ``token`` is the one the edge gave for this session and agent."""
    expected = session_token(private_key, agent_id, session_id)
    if expected is None or not token:
        return False
    return hmac.compare_digest(expected.encode(), token.encode())


# -- resume tokens: a WebRTC caller re-offers to another worker as the same call -------------

_RESUME_CONTEXT = b"telephony-edge resume token v1"


class ResumeTokenError(ValueError):
    """The resume token is malformed, forged, bound to another call, or expired."""


def _resume_mac(private_key: str, call_id: str, generation: int, expiry: int) -> str:
    key = hmac.new(private_key.encode(), _RESUME_CONTEXT, hashlib.sha256).digest()
    message = f"{call_id}\n{generation}\n{expiry}".encode()
    digest = hmac.new(key, message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def resume_token(private_key: str | None, call_id: str, generation: int, expiry: int) -> str | None:
    """A token that lets its holder bring ``call_id`` back at ``generation`` until ``expiry``
    (Unix seconds); None when there is no key to sign with (then no call is resumable).

    Format: ``<generation>.<expiry>.<base64url HMAC-SHA256>``. It is single-use per
    generation because the takeover it leads to moves the call to the next one.
    """
    if not private_key:
        return None
    return f"{generation}.{expiry}.{_resume_mac(private_key, call_id, generation, expiry)}"


def resume_generation(private_key: str | None, call_id: str, token: str, now: float) -> int:
    """The generation ``token`` resumes ``call_id`` at; :class:`ResumeTokenError` unless the
    edge signed it for that call and it has not expired (compared in constant time)."""
    parts = token.split(".")
    if not private_key or len(parts) != 3 or len(token) > 128:
        raise ResumeTokenError("malformed resume token")
    generation, expiry, mac = parts
    if not (generation.isascii() and generation.isdigit() and len(generation) < 10):
        raise ResumeTokenError("malformed resume token")
    if not (expiry.isascii() and expiry.isdigit() and len(expiry) < 13):
        raise ResumeTokenError("malformed resume token")
    expected = _resume_mac(private_key, call_id, int(generation), int(expiry))
    if not hmac.compare_digest(expected.encode(), mac.encode("ascii", "replace")):
        raise ResumeTokenError("resume token signature does not match this call")
    if now > int(expiry):
        raise ResumeTokenError("resume token expired")
    return int(generation)
