"""Digest authentication with the edge as the authenticating server (RFC 3261 §22.4, RFC 8760).

A trunk configured with credentials must answer the edge's ``401`` challenge:
one ``WWW-Authenticate`` per algorithm, SHA-256 first then MD5 (RFC 8760
§2.4: the client takes the first it supports), ``qop="auth"``. The client
repeats its INVITE with ``Authorization`` and :meth:`DigestServer.verify`
checks it.

A nonce is ``<issued-at>.<salt>.<HMAC(secret, issued-at.salt | binding)>``
(the salt makes each unique): it costs no
memory to issue (bounded whatever the load), cannot be forged (the secret is
per process), expires after ``nonce_ttl`` (then ``stale=true``: the client
retries without asking its user), and is *bound* to what it may authorize:
the client's source address, the Call-ID and the method of the request it
was issued for (:func:`binding`; §8.1.3.5: the retried request keeps its
Call-ID). A nonce copied to another call or sent from elsewhere is not ours
(a fresh challenge), and since a spoofer never sees the 401 sent to the
address it names, it cannot get a nonce bound to someone else's address.

Replay (RFC 7616 §3.4.5, §5.6): each nonce that authorized a request is
remembered with its highest ``nc`` (:class:`NonceUses`, bounded; nonces older
than the oldest forgotten one are treated as stale); a request whose ``nc``
is not above it, or a second use of a nonce without ``qop`` (no ``nc``), is
:attr:`Outcome.REPLAY`: challenged again (``stale=true``), never admitted.
``qop=auth`` requires ``nc`` (8 hex digits) and ``cnonce``; ``auth-int`` is
not offered and is refused. Secrets are compared in constant time.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import re
import secrets
from collections import OrderedDict
from collections.abc import Callable

from telephony_edge.sip.headers import split_list
from telephony_edge.sip.message import ENCODING, ERRORS

ALGORITHMS: dict[str, Callable[[bytes], hashlib._Hash]] = {
    "SHA-256": hashlib.sha256,
    "MD5": hashlib.md5,
}
MAX_HEADER = 2048
MAX_NONCE_USES = 100_000  # nonces remembered with their nc (a successful use each)
_NC = re.compile(r"[0-9a-fA-F]{8}")


class Outcome(enum.Enum):
    OK = "ok"
    MISSING = "missing"  # no (usable) credentials: challenge
    STALE = "stale"  # a genuine nonce past its time: challenge with stale=true
    REPLAY = "replay"  # a good digest with a used nonce and nc: challenge with stale=true
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


def binding(source: str, call_id: str, method: str) -> str:
    """What a nonce is bound to: the client's address and the request it was issued for."""
    return f"{source}|{call_id}|{method}"


class NonceUses:
    """The highest ``nc`` seen per nonce that authorized a request; see the module docstring.

    At most ``max_nonces``, oldest forgotten first; ``floor`` is the issue time (ms) of
    the newest forgotten one: an unknown nonce issued at or before it may have been
    used, so it is stale rather than fresh."""

    def __init__(self, max_nonces: int = MAX_NONCE_USES) -> None:
        self.max_nonces = max_nonces
        self.floor = -1
        self._nc: OrderedDict[str, int] = OrderedDict()

    def __len__(self) -> int:
        return len(self._nc)

    def use(self, nonce: str, issued: int, nc: int) -> Outcome:
        """OK (and remember ``nc``) when ``nc`` is above every earlier use of ``nonce``."""
        last = self._nc.get(nonce)
        if last is None and issued <= self.floor:
            return Outcome.STALE
        if last is not None and nc <= last:
            return Outcome.REPLAY
        self._nc[nonce] = nc
        self._nc.move_to_end(nonce)
        while len(self._nc) > self.max_nonces:
            old, _ = self._nc.popitem(last=False)
            self.floor = max(self.floor, int(old.partition(".")[0], 16))
        return Outcome.OK

    def expire(self, oldest: int) -> None:
        """Forget nonces issued before ``oldest`` (ms): they are stale anyway."""
        while self._nc:
            nonce = next(iter(self._nc))
            if int(nonce.partition(".")[0], 16) >= oldest:
                return
            del self._nc[nonce]


class DigestServer:
    """Challenges and checks; see the module docstring."""

    def __init__(
        self,
        nonce_ttl: float = 300.0,
        secret: bytes | None = None,
        max_nonces: int = MAX_NONCE_USES,
    ) -> None:
        self.nonce_ttl = nonce_ttl
        self._secret = secret or secrets.token_bytes(32)
        self.uses = NonceUses(max_nonces)

    def _mac(self, issued: str, bound: str) -> str:
        message = _raw(f"{issued}|{bound}")
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()[:32]

    def nonce(self, now: float, bound: str) -> str:
        """A nonce issued at ``now`` for the request ``bound`` describes (:func:`binding`)."""
        issued = f"{int(now * 1000):x}.{secrets.token_hex(4)}"
        return f"{issued}.{self._mac(issued, bound)}"

    def challenge(
        self,
        realm: str,
        now: float,
        stale: bool = False,
        algorithms: tuple[str, ...] = tuple(ALGORITHMS),
        *,
        bound: str,
    ) -> list[tuple[str, str]]:
        """``WWW-Authenticate`` headers for a 401, in ``algorithms``' order (strongest first)."""
        nonce = self.nonce(now, bound)
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
        *,
        bound: str,
    ) -> Outcome:
        """Whether ``header`` authorizes this request (``bound``: its :func:`binding`)."""
        if not header or len(header) > MAX_HEADER:
            return Outcome.MISSING
        scheme, p = parse_auth_params(header)
        algorithm = p.get("algorithm", "MD5").upper()
        if scheme != "digest" or algorithm not in algorithms or p.get("realm") != realm:
            return Outcome.MISSING
        issued, _, mac = p.get("nonce", "").rpartition(".")
        if not hmac.compare_digest(_raw(mac), self._mac(issued, bound).encode()):
            return Outcome.MISSING  # not ours, or not for this source and call: a fresh one
        issued_ms = int(issued.partition(".")[0], 16)
        if now * 1000 - issued_ms > self.nonce_ttl * 1000:
            return Outcome.STALE
        qop, nc = p.get("qop", ""), p.get("nc", "")
        if qop not in ("", "auth") or (qop and not (_NC.fullmatch(nc) and p.get("cnonce"))):
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
        if not (user_ok and digest_ok):
            return Outcome.BAD
        self.uses.expire(int((now - self.nonce_ttl) * 1000))
        return self.uses.use(p["nonce"], issued_ms, int(nc, 16) if qop else 1)


def _raw(text: str) -> bytes:
    """Header text back to its bytes (undecodable bytes were kept as surrogates)."""
    return text.encode(ENCODING, ERRORS)
