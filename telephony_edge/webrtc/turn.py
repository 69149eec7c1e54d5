"""Short-lived TURN credentials for browsers: the TURN REST API's shared-secret scheme.

A TURN server relays for whoever holds its credentials, so a static username and
password in a public page is an open relay for anyone who reads the page. The
scheme that coturn (``use-auth-secret``, ``static-auth-secret``), eturnal and
most TURN services implement instead (draft-uberti-behave-turn-rest): the server
and the edge share a secret; for each page the edge mints

* username ``<expiry as Unix time>:<user>``,
* credential ``base64(HMAC-SHA1(secret, username))``,

and the TURN server recomputes the credential from the username and refuses it
once the expiry has passed. The secret never leaves the edge; a page's
credentials are worth ``webrtc.turn_credential_ttl_s`` of relaying at most.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class TurnCredentials:
    username: str
    credential: str
    expires_at: int  # Unix time


def rest_credentials(secret: str, user: str, ttl_s: int, now: float) -> TurnCredentials:
    """Credentials valid for ``ttl_s`` from ``now`` (Unix time) for ``user``."""
    expires_at = int(now) + ttl_s
    username = f"{expires_at}:{user}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return TurnCredentials(username, base64.b64encode(digest).decode(), expires_at)
