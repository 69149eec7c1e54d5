"""Digest authentication with the edge as the client (RFC 3261 §22.2-22.3, RFC 7616, RFC 8760).

A carrier or a registrar answers the edge's INVITE or REGISTER with ``401``
(``WWW-Authenticate``) or ``407`` (``Proxy-Authenticate``). The edge then
sends the request again, with a new CSeq, carrying ``Authorization`` or
``Proxy-Authorization``. The digest itself is
:func:`telephony_edge.sip.auth.digest_response`, the same computation the
edge checks trunks' answers with.

Which challenge: the first the edge can answer, in the order the server
wrote them (RFC 8760 §2.4: the server lists its preferred algorithm first),
among SHA-256 and MD5, with ``qop=auth`` or no qop (RFC 2069). A challenge
asking only for ``auth-int``, or naming another algorithm, is not answered.

When to give up: a challenge that repeats the nonce the edge just answered,
without ``stale=true``, means the credentials are wrong (§22.2). A new
nonce (the registrar forgot the old one, or the answer was late) or a stale
one is answered again; the state machines that use this cap how many times
in a row (``MAX_CHALLENGES``), so a server issuing nonces for ever cannot
keep a request going.

``nc`` counts the requests answered with one nonce (8 hex digits), so a
registration refresh can reuse the last challenge without a round trip;
``cnonce`` is random per request. Nothing here keeps the password anywhere
but in the object; the headers carry only the digest.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass

from telephony_edge.sip.auth import ALGORITHMS, digest_response, parse_auth_params
from telephony_edge.sip.message import Response

#: challenges in a row one request may answer (the first, a stale or renewed nonce)
MAX_CHALLENGES = 3
_HEADERS = {
    401: ("WWW-Authenticate", "Authorization"),
    407: ("Proxy-Authenticate", "Proxy-Authorization"),
}


@dataclass(frozen=True, slots=True)
class Challenge:
    """One challenge the edge can answer, and the header its answer goes in."""

    answer_header: str  # Authorization | Proxy-Authorization
    realm: str
    nonce: str
    algorithm: str  # SHA-256 | MD5
    qop: str  # "auth" or "" (RFC 2069)
    opaque: str | None
    stale: bool


def read_challenge(response: Response) -> Challenge | None:
    """The first challenge of a 401 or 407 the edge can answer; None if there is none."""
    names = _HEADERS.get(response.status)
    if names is None:
        return None
    header, answer_header = names
    for value in response.headers.get_all(header):
        scheme, params = parse_auth_params(value)
        algorithm = params.get("algorithm", "MD5").upper()
        nonce, realm = params.get("nonce"), params.get("realm")
        if scheme != "digest" or algorithm not in ALGORITHMS or not nonce or realm is None:
            continue
        offered = {q.strip().lower() for q in params.get("qop", "").split(",") if q.strip()}
        if offered and "auth" not in offered:
            continue  # auth-int only
        return Challenge(
            answer_header,
            realm,
            nonce,
            algorithm,
            "auth" if offered else "",
            params.get("opaque"),
            params.get("stale", "").lower() == "true",
        )
    return None


class DigestClient:
    """One account's credentials and the challenge it last answered; see the module docstring."""

    def __init__(
        self,
        username: str,
        password: str,
        realm: str | None = None,
        cnonce: Callable[[], str] | None = None,
    ) -> None:
        self.username = username
        self._password = password
        self.realm = realm  # None: answer any realm
        self._cnonce = cnonce or (lambda: secrets.token_hex(8))
        self.challenge: Challenge | None = None
        self._nc = 0
        self._answered: str | None = None  # the nonce the last request carried an answer to

    def accept(self, response: Response) -> str | None:
        """Take the challenge of a 401/407; None if the request may go again with
        :meth:`headers`, else why not (wrong credentials, nothing the edge can answer)."""
        challenge = read_challenge(response)
        if challenge is None:
            return f"{response.status} without a digest challenge the edge can answer"
        if self.realm is not None and challenge.realm != self.realm:
            return f"challenged for realm {challenge.realm[:64]!r}, not {self.realm!r}"
        if challenge.nonce == self._answered and not challenge.stale:
            return "the credentials were refused"
        if self.challenge is None or challenge.nonce != self.challenge.nonce:
            self._nc = 0
        self.challenge = challenge
        return None

    def forget(self) -> None:
        """Drop the challenge (the next request goes without credentials)."""
        self.challenge = None
        self._answered = None

    def headers(self, method: str, uri: str) -> list[tuple[str, str]]:
        """The answer to the last challenge for a request ``method uri`` (none: empty)."""
        challenge = self.challenge
        if challenge is None:
            return []
        self._nc += 1
        nc, cnonce = f"{self._nc:08x}", self._cnonce() if challenge.qop else ""
        response = digest_response(
            challenge.algorithm,
            self.username,
            challenge.realm,
            self._password,
            method,
            uri,
            challenge.nonce,
            challenge.qop,
            nc if challenge.qop else "",
            cnonce,
        )
        parts = [
            f'username="{_quoted(self.username)}"',
            f'realm="{_quoted(challenge.realm)}"',
            f'nonce="{_quoted(challenge.nonce)}"',
            f'uri="{_quoted(uri)}"',
            f'response="{response}"',
            f"algorithm={challenge.algorithm}",
        ]
        if challenge.qop:
            parts += [f"qop={challenge.qop}", f"nc={nc}", f'cnonce="{cnonce}"']
        if challenge.opaque is not None:
            parts.append(f'opaque="{_quoted(challenge.opaque)}"')
        self._answered = challenge.nonce
        return [(challenge.answer_header, "Digest " + ", ".join(parts))]


def _quoted(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')
