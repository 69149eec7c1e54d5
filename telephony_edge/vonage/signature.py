"""Vonage's signed webhooks: ``Authorization: Bearer <JWT>``, HS256 with the signature secret.

Vonage signs every webhook of an application with signed callbacks enabled:
the JWT carries ``iat``, ``jti``, ``iss`` and, for requests with a body,
``payload_hash`` (hex SHA-256 of the body). The signature (and ``exp`` when
present) is checked by the SDK's :func:`vonage_jwt.verify_signature`; the
body hash and the token's age are checked here, because a signature alone
would let a captured token carry any body, or be replayed for ever.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Any

import jwt
from aiohttp import web
from vonage_jwt import VonageVerifyJwtError, verify_signature

BEARER = "Bearer "
CLOCK_SKEW_S = 30.0


class SignatureRejected(Exception):
    """The webhook is not signed by Vonage (missing, forged, expired, other body)."""


def check_token(
    token: str, secret: str, body: bytes, *, max_age_s: float, now: float | None = None
) -> dict[str, Any]:
    """The JWT's claims once it proves Vonage sent ``body``; else :class:`SignatureRejected`."""
    try:
        if not verify_signature(token, secret):
            raise SignatureRejected("signature does not match")
    except VonageVerifyJwtError as exc:  # expired, malformed, wrong algorithm …
        raise SignatureRejected(f"invalid token: {exc}"[:200]) from None
    # verified above; read the claims (the same check again, so nothing unverified is used)
    try:
        claims: dict[str, Any] = jwt.decode(
            token, secret, algorithms=["HS256"], options={"verify_iat": False}
        )
    except jwt.PyJWTError as exc:
        raise SignatureRejected(f"invalid token: {exc}"[:200]) from None
    current = time.time() if now is None else now
    iat = claims.get("iat")
    if not isinstance(iat, int | float) or isinstance(iat, bool):
        raise SignatureRejected("token without iat")
    if iat > current + CLOCK_SKEW_S or ("exp" not in claims and current - iat > max_age_s):
        raise SignatureRejected("token issued too long ago or in the future")
    expected = claims.get("payload_hash")
    if body and expected is None:
        raise SignatureRejected("token without payload_hash for a request with a body")
    if expected is not None:
        digest = hashlib.sha256(body).hexdigest()
        if not isinstance(expected, str) or not hmac.compare_digest(
            expected.lower().encode("ascii", "replace"), digest.encode()
        ):
            raise SignatureRejected("payload_hash does not match the body")
    return claims


async def verified_body(
    request: web.Request, secret: str, *, enabled: bool, max_age_s: float
) -> bytes:
    """The request's body once Vonage's signature checks out; 401 otherwise."""
    body = await request.read()
    if not enabled:
        return body
    header = request.headers.get("Authorization", "")
    if not header.startswith(BEARER) or len(header) > 8192:
        raise web.HTTPUnauthorized(text="a signed Vonage webhook is required\n")
    try:
        check_token(header[len(BEARER) :].strip(), secret, body, max_age_s=max_age_s)
    except SignatureRejected as exc:
        raise web.HTTPUnauthorized(text=f"{exc}\n") from None
    return body


def sign(secret: str, body: bytes = b"", *, now: float | None = None, **claims: Any) -> str:
    """A token as Vonage signs a webhook (for the simulator and tests)."""
    issued = int(time.time() if now is None else now)
    payload: dict[str, Any] = {
        "iat": issued,
        "jti": hashlib.sha256(f"{issued}{time.perf_counter_ns()}".encode()).hexdigest()[:32],
        "iss": "Vonage",
    }
    if body:
        payload["payload_hash"] = hashlib.sha256(body).hexdigest()
    payload.update(claims)
    return jwt.encode(payload, secret, algorithm="HS256")
