"""Vonage's signed webhooks: ``Authorization: Bearer <JWT>``, HS256 with the signature secret.

Vonage signs every webhook of an application with signed callbacks enabled:
the JWT carries ``iat``, ``jti``, ``iss``, ``application_id`` and, for a
request with a payload, ``payload_hash``: hex SHA-256 of the body (POST),
or of the query parameters as a compact JSON object in the order sent
(GET; Vonage's "verify the payload" procedure). The signature (and ``exp``
when present) is checked by the SDK's :func:`vonage_jwt.verify_signature`;
the payload hash, the application and the token's age are checked here,
because a signature alone would let a captured token carry any uuid, caller
or body, for another application of the account, or for ever. That each
token is used once is the webhook's part (``vonage.replay``): it needs the
coordinator.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import jwt
import orjson
from aiohttp import web
from vonage_jwt import VonageVerifyJwtError, verify_signature

BEARER = "Bearer "
CLOCK_SKEW_S = 30.0


class SignatureRejected(Exception):
    """The webhook is not signed by Vonage (missing, forged, expired, other body)."""


def query_payload(pairs: Iterable[tuple[str, str]]) -> bytes:
    """What Vonage hashes for a GET webhook: its query parameters as compact JSON, in order."""
    return orjson.dumps(dict(pairs))


def check_token(
    token: str,
    secret: str,
    body: bytes,
    *,
    max_age_s: float,
    now: float | None = None,
    application_id: str | None = None,
) -> dict[str, Any]:
    """The JWT's claims once it proves Vonage sent ``body``; else :class:`SignatureRejected`.

    ``body`` is the signed payload (:func:`signed_payload`). A token naming
    another ``application_id`` than ours (the secret is the account's) is refused.
    """
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
    if application_id and claims.get("application_id", application_id) != application_id:
        raise SignatureRejected("token for another application")
    expected = claims.get("payload_hash")
    if body and expected is None:
        raise SignatureRejected("token without payload_hash for a request with a payload")
    if expected is not None:
        digest = hashlib.sha256(body).hexdigest()
        if not isinstance(expected, str) or not hmac.compare_digest(
            expected.lower().encode("ascii", "replace"), digest.encode()
        ):
            raise SignatureRejected("payload_hash does not match the body")
    return claims


def signed_payload(request: web.BaseRequest, body: bytes) -> bytes:
    """What ``payload_hash`` covers: the body, or for a GET its query parameters."""
    if request.method == "GET":
        return query_payload(request.query.items()) if request.query else b""
    return body


@dataclass(frozen=True, slots=True)
class Verified:
    """A webhook whose token checked out: its body and the token's claims (empty unchecked)."""

    body: bytes
    claims: dict[str, Any]


async def verified_body(
    request: web.Request,
    secret: str,
    *,
    enabled: bool,
    max_age_s: float,
    application_id: str | None = None,
) -> Verified:
    """The request's body and claims once Vonage's signature checks out; 401 otherwise."""
    body = await request.read()
    if not enabled:
        return Verified(body, {})
    header = request.headers.get("Authorization", "")
    if not header.startswith(BEARER) or len(header) > 8192:
        raise web.HTTPUnauthorized(text="a signed Vonage webhook is required\n")
    try:
        claims = check_token(
            header[len(BEARER) :].strip(),
            secret,
            signed_payload(request, body),
            max_age_s=max_age_s,
            application_id=application_id,
        )
    except SignatureRejected as exc:
        raise web.HTTPUnauthorized(text=f"{exc}\n") from None
    return Verified(body, claims)


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
