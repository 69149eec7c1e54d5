"""Each Vonage webhook token is used once, on every worker.

Why: a token's signature, payload hash and age say Vonage signed *this*
request recently; they do not stop the same request, captured, from being
sent again while the token is young (``max_webhook_age_s``, 300 s by
default, or until its ``exp``). Vonage gives each token a ``jti``; the first
request carrying it records it in the coordinator (``register_pending``,
first writer wins, Redis or memory) for as long as the token could still
pass the age check, and any later request with it is refused.
"""

from __future__ import annotations

import time
from typing import Any

from telephony_edge.coord.base import Coordinator
from telephony_edge.vonage.signature import CLOCK_SKEW_S, SignatureRejected

MAX_JTI_CHARS = 128


def jti_key(jti: str) -> str:
    """The coordinator key recording that token ``jti`` was used."""
    return f"vonage-jti:{jti}"


def token_lifetime(claims: dict[str, Any], max_age_s: float, now: float) -> float:
    """How much longer the token could pass :func:`~.signature.check_token` (at least 1 s)."""
    exp = claims.get("exp")
    if isinstance(exp, int | float) and not isinstance(exp, bool):
        left = float(exp) - now
    else:
        left = float(claims["iat"]) + max_age_s - now
    return max(1.0, left + CLOCK_SKEW_S)


async def use_once(
    coordinator: Coordinator, claims: dict[str, Any], *, max_age_s: float, now: float | None = None
) -> None:
    """Record the token as used; :class:`SignatureRejected` if it was, or cannot be.

    Coordinator errors pass through (the caller refuses as in an outage).
    """
    jti = claims.get("jti")
    if not isinstance(jti, str) or not jti or len(jti) > MAX_JTI_CHARS:
        raise SignatureRejected("token without a usable jti")
    current = time.time() if now is None else now
    ttl = token_lifetime(claims, max_age_s, current)
    if not await coordinator.register_pending(jti_key(jti), {}, ttl):
        raise SignatureRejected("token already used")
