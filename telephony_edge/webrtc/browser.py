"""The browser path of ``POST /webrtc/offer``: the public key, allowed origins (CORS), rate limits.

A page cannot keep a secret, so browsers use ``api.public_key``: it is
rendered into the widget page and anyone can read it. What it allows is
narrow: offers for agents marked ``allow_public_key: true`` (403 otherwise),
without ``agent_config`` overrides, only with an ``Origin`` the edge trusts
(``webrtc.allowed_origins`` plus the edge's own ``public_url``; 403
otherwise), and at most ``webrtc.public_rate_per_minute`` offers per client
(a token bucket of ``webrtc.public_burst``; 429 beyond). The client is the
request's address, which behind a trusted reverse proxy is the one the proxy
names (:mod:`telephony_edge.client_address`), so visitors behind one proxy
each have their own bucket. All clients together get at most
``webrtc.public_global_rate_per_minute`` offers (``public_global_burst`` at
once; 429 beyond) per worker: a script spread over many addresses cannot turn
the public key into unbounded work. The origin check stops other web sites
from spending the key from their visitors' browsers; it does not stop a
script outside a browser, which the rate limits and the public-agent rule bound.

A re-offer whose resume token checks out (:mod:`telephony_edge.webrtc.resume`) is
not a new call: it brings back one already admitted, and when a worker dies every
page it carried re-offers within the same second, many of them through one office
or carrier NAT. It is counted per call instead (:data:`RESUMES_PER_MINUTE`, at
most :data:`RESUME_BURST` at once; 429 beyond), not against the client's or
everyone's buckets, so twenty pages behind one address all come back.
"""

from __future__ import annotations

import contextlib
import hmac

from aiohttp import web

from telephony_edge import metrics
from telephony_edge.api import ApiError
from telephony_edge.config import Settings
from telephony_edge.rate_limit import RateLimiter
from telephony_edge.webrtc.settings import WebRtcSettings, normalize_origin

PREFLIGHT_MAX_AGE_S = 600
RESUMES_PER_MINUTE = 12.0  # re-offers of one call (its worker lost, its path failing)
RESUME_BURST = 4
_EVERYONE = "*"  # the global bucket's one key


def allowed_origins(settings: Settings, webrtc: WebRtcSettings) -> frozenset[str]:
    origins = set(webrtc.allowed_origins)
    with contextlib.suppress(ValueError, AttributeError):
        origins.add(normalize_origin(str(settings.public_url)))
    return frozenset(origins)


def origin_of(request: web.Request) -> str | None:
    """The request's ``Origin``, normalized; None when absent or unparseable (``null``)."""
    origin = request.headers.get("Origin")
    if not origin:
        return None
    try:
        return normalize_origin(origin)
    except ValueError:
        return None


def cors_headers(origin: str) -> dict[str, str]:
    return {
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Allow-Methods": "POST, OPTIONS",
        "Access-Control-Allow-Headers": "Authorization, Content-Type",
        "Access-Control-Max-Age": str(PREFLIGHT_MAX_AGE_S),
        "Vary": "Origin",
    }


def key_matches(request: web.Request, key: str | None) -> bool:
    """Whether ``Authorization: Bearer <key>`` carries ``key`` (constant time)."""
    if not key:
        return False
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    try:
        given_bytes = given.strip().encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return False
    return (
        scheme.lower() == "bearer"
        and bool(given_bytes)
        and hmac.compare_digest(given_bytes, key.encode())
    )


class Browser:
    """The browser path's state for one app: origins and the rate limiters."""

    def __init__(self, settings: Settings, webrtc: WebRtcSettings) -> None:
        self.settings = settings
        self.origins = allowed_origins(settings, webrtc)
        self.limiter = RateLimiter(webrtc.public_rate_per_minute, webrtc.public_burst)
        self.everyone = RateLimiter(
            webrtc.public_global_rate_per_minute, webrtc.public_global_burst
        )
        self.resumes = RateLimiter(RESUMES_PER_MINUTE, RESUME_BURST)

    def allowed(self, origin: str | None) -> bool:
        return origin is not None and origin in self.origins

    def check_origin(self, request: web.Request) -> None:
        """A public-key offer comes from an allowed web origin (403 otherwise)."""
        if not self.allowed(origin_of(request)):
            raise ApiError(403, "the public key is accepted only from an allowed web origin")

    def check_rate(self, request: web.Request, resuming: str | None) -> None:
        """The rate limits of a public-key offer (429): per client and for everyone, or
        per call for the re-offer of ``resuming`` (its token checked)."""
        if resuming is not None:
            wait = self.resumes.take(resuming)
            if wait > 0:
                metrics.PUBLIC_OFFERS_REFUSED.labels(limit="resume").inc()
                raise ApiError(429, f"too many re-offers of this call; retry in {wait:.0f} s")
            return
        wait = self.limiter.take(request.remote or "unknown")
        if wait > 0:
            metrics.PUBLIC_OFFERS_REFUSED.labels(limit="client").inc()
            raise ApiError(429, f"too many offers from this address; retry in {wait:.0f} s")
        wait = self.everyone.take(_EVERYONE)
        if wait > 0:
            metrics.PUBLIC_OFFERS_REFUSED.labels(limit="global").inc()
            raise ApiError(429, f"too many offers to this edge; retry in {wait:.0f} s")


BROWSER = web.AppKey("webrtc_browser", Browser)
