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
