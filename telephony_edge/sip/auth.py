"""Digest authentication with the edge as the authenticating server (RFC 3261 §22.4, RFC 8760).

A trunk configured with credentials must answer the edge's ``401`` challenge:
one ``WWW-Authenticate`` per algorithm, SHA-256 first then MD5 (RFC 8760
§2.4: the client takes the first it supports), ``qop="auth"``. The client
repeats its INVITE with ``Authorization``; :meth:`DigestServer.verify` checks
it without any stored state: a nonce is ``<issued-at>.<HMAC(secret,
issued-at)>``, so nonces cost no memory (bounded whatever the load), cannot
be forged, and expire after ``nonce_ttl`` (then the client is challenged
again with ``stale=true`` and retries without asking its user). Secrets are
compared in constant time.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import secrets
from collections.abc import Callable

from telephony_edge.sip.message import ENCODING, ERRORS, split_list

ALGORITHMS: dict[str, Callable[[bytes], hashlib._Hash]] = {
    "SHA-256": hashlib.sha256,
    "MD5": hashlib.md5,
}
MAX_HEADER = 2048


class Outcome(enum.Enum):
    OK = "ok"
    MISSING = "missing"  # no (usable) credentials: challenge
    STALE = "stale"  # a genuine nonce past its time: challenge with stale=true
    BAD = "bad"  # wrong user, password or digest: refuse


def parse_auth_params(value: str) -> tuple[str, dict[str, str]]:
    """``Digest a="b", c=d`` → ("digest", {"a": "b", "c": "d"}); names lower-cased."""
    scheme, _, rest = value.strip().partition(" ")
    params: dict[str, str] = {}
    for item in split_list(rest):
        name, eq, raw = item.partition("=")
        if not eq:
            continue
        raw = raw.strip()
        if len(raw) >= 2 and raw[0] == raw[-1] == '"':
            raw = raw[1:-1].replace('\\"', '"').replace("\\\\", "\\")
        params[name.strip().lower()] = raw
    return scheme.lower(), params


def digest_response(
    algorithm: str,
    username: str,
    realm: str,
    password: str,
    method: str,
    uri: str,
    nonce: str,
    qop: str = "",
    nc: str = "",
    cnonce: str = "",
) -> str:
    """The ``response`` value of RFC 2617 §3.2.2.1 (RFC 8760 with SHA-256)."""
    h = ALGORITHMS[algorithm]

    def hex_of(text: str) -> str:
        return h(_raw(text)).hexdigest()

    ha1 = hex_of(f"{username}:{realm}:{password}")
    ha2 = hex_of(f"{method}:{uri}")
    if qop:
        return hex_of(f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")
    return hex_of(f"{ha1}:{nonce}:{ha2}")


class DigestServer:
    """Challenges and checks; see the module docstring."""

    def __init__(self, nonce_ttl: float = 300.0, secret: bytes | None = None) -> None:
        self.nonce_ttl = nonce_ttl
        self._secret = secret or secrets.token_bytes(32)

    def _mac(self, issued: str) -> str:
        return hmac.new(self._secret, _raw(issued), hashlib.sha256).hexdigest()[:32]

    def nonce(self, now: float) -> str:
        issued = f"{int(now * 1000):x}"
        return f"{issued}.{self._mac(issued)}"

    def challenge(
        self,
        realm: str,
        now: float,
        stale: bool = False,
        algorithms: tuple[str, ...] = tuple(ALGORITHMS),
    ) -> list[tuple[str, str]]:
        """``WWW-Authenticate`` headers for a 401, in ``algorithms``' order (strongest first)."""
        nonce = self.nonce(now)
        extra = ", stale=true" if stale else ""
        return [
            (
                "WWW-Authenticate",
                f'Digest realm="{realm}", nonce="{nonce}", algorithm={name}, qop="auth"{extra}',
            )
            for name in algorithms
        ]

    def verify(
        self,
        header: str | None,
        method: str,
        request_uri: str,
        realm: str,
        username: str,
        password: str,
        now: float,
        algorithms: tuple[str, ...] = tuple(ALGORITHMS),
    ) -> Outcome:
        if not header or len(header) > MAX_HEADER:
            return Outcome.MISSING
        scheme, p = parse_auth_params(header)
        algorithm = p.get("algorithm", "MD5").upper()
        if scheme != "digest" or algorithm not in algorithms or p.get("realm") != realm:
            return Outcome.MISSING
        issued, _, mac = p.get("nonce", "").partition(".")
        if not hmac.compare_digest(_raw(mac), self._mac(issued).encode()):
            return Outcome.MISSING  # not ours (another worker's, or made up): a fresh challenge
        if now * 1000 - int(issued, 16) > self.nonce_ttl * 1000:
            return Outcome.STALE
        qop = p.get("qop", "")
        if qop not in ("", "auth") or (qop and not (p.get("nc") and p.get("cnonce"))):
            return Outcome.BAD
        if p.get("uri") != request_uri:
            return Outcome.BAD
        expected = digest_response(
            algorithm,
            username,
            realm,
            password,
            method,
            request_uri,
            p["nonce"],
            qop,
            p.get("nc", ""),
            p.get("cnonce", ""),
        )
        user_ok = hmac.compare_digest(_raw(p.get("username", "")), username.encode())
        digest_ok = hmac.compare_digest(_raw(p.get("response", "").lower()), expected.encode())
        return Outcome.OK if user_ok and digest_ok else Outcome.BAD


def _raw(text: str) -> bytes:
    """Header text back to its bytes (undecodable bytes were kept as surrogates)."""
    return text.encode(ENCODING, ERRORS)
