"""The ``webrtc:`` section of the configuration."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from telephony_edge.config import ProviderSettings, Settings
from telephony_edge.webrtc.candidates import PeerPolicy, parse_networks
from telephony_edge.webrtc.ports import PortRange
from telephony_edge.webrtc.turn import rest_credentials


class IceServerSettings(BaseModel):
    """One STUN or TURN server, as ``RTCIceServer`` takes it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    urls: list[str] = Field(min_length=1)
    """``stun:host:port``, ``turn:host:port?transport=udp``, ``turns:…``."""
    username: str | None = None
    credential: str | None = None
    secret: str | None = Field(default=None, min_length=16)
    """The TURN REST API's shared secret (coturn's ``static-auth-secret``): browsers get
    credentials minted from it that expire (:mod:`telephony_edge.webrtc.turn`), the secret
    never. ``username`` is then the user part of the minted name (default ``widget``)."""

    @model_validator(mode="after")
    def _one_kind_of_credential(self) -> IceServerSettings:
        if self.secret is not None and self.credential is not None:
            raise ValueError("an ICE server takes a credential or a secret, not both")
        if self.secret is not None and not all(
            u.startswith(("turn:", "turns:")) for u in self.urls
        ):
            raise ValueError("a secret is for TURN servers (turn:, turns:)")
        return self

    def for_browser(self, ttl_s: int, now: float) -> dict[str, object]:
        """This server as a page's ``RTCIceServer``: minted credentials, never the secret."""
        if self.secret is None:
            return {"urls": self.urls}  # STUN: nothing to hide
        minted = rest_credentials(self.secret, self.username or "widget", ttl_s, now)
        return {"urls": self.urls, "username": minted.username, "credential": minted.credential}

    @field_validator("urls")
    @classmethod
    def _schemes(cls, urls: list[str]) -> list[str]:
        for url in urls:
            if not url.startswith(("stun:", "turn:", "turns:")):
                raise ValueError(f"{url!r}: an ICE server URL starts with stun:, turn: or turns:")
        return urls


class WebRtcSettings(ProviderSettings):
    advertised_addresses: list[str] = Field(default_factory=list)
    """Local addresses the edge gathers its host ICE candidates on, so the answer offers
    exactly these. Empty: aioice's choice (every interface but loopback). A loopback-only
    setup needs ``127.0.0.1`` here; behind NAT, list the interface the public address maps
    to and add a STUN server (``ice_servers``) for the server-reflexive candidate."""
    allowed_peer_networks: list[str] = Field(default_factory=list)
    """Networks (CIDR: ``10.20.0.0/16``, ``127.0.0.0/8``, ``::1/128``) whose addresses the
    edge may send ICE checks and media to although they are not public: loopback,
    link-local, private (RFC 1918, ``fc00::/7``), shared or reserved. Empty: public
    addresses only. Cloud-metadata, unspecified, multicast and broadcast addresses are
    refused whatever this says (:mod:`telephony_edge.webrtc.candidates`)."""
    ice_servers: list[IceServerSettings] = Field(default_factory=list)
    """STUN/TURN servers for the edge's own candidates. Empty: none (aiortc would
    otherwise ask Google's public STUN server)."""
    max_peer_connections: int = Field(default=100, ge=1, le=10_000)
    """Concurrent peer connections per worker (offers being answered included); 503 beyond."""
    max_offer_bytes: int = Field(default=16_384, ge=512, le=60_000)
    """The largest SDP offer taken (413 beyond)."""
    connect_timeout_s: float = Field(default=15.0, gt=0, le=120)
    """From the answer to ICE + DTLS connected; past it the call ends ``error``."""

    media_port_min: int | None = Field(default=None, ge=1024, le=65535)
    """The lowest UDP port of the range the edge's ICE/media sockets bind (with
    ``media_port_max``; both unset: any ephemeral port). One port per peer connection
    and advertised address; an offer finding none free is 503."""
    media_port_max: int | None = Field(default=None, ge=1024, le=65535)
    """The highest UDP port of that range (inclusive)."""
    consent_interval_s: float = Field(default=0.5, gt=0, le=5)
    """How often the edge asks the peer for ICE consent (a STUN check, RFC 7675)."""
    consent_timeout_s: float = Field(default=3.5, ge=1, le=30)
    """A connected peer that answers no consent check for this long is gone (its browser
    was killed, its network dropped): the call ends ``user-ended``."""

    allowed_origins: list[str] = Field(default_factory=list)
    """Web origins (``https://shop.example.com``) whose pages may post offers with the
    public key (CORS). The edge's own ``public_url`` is always allowed (its ``/widget``)."""
    public_rate_per_minute: float = Field(default=10.0, gt=0, le=6000)
    """Offers with the public key per client per minute (a token bucket); 429 beyond. The
    client is the socket's address, or behind ``server.trusted_proxies`` the one they name."""
    public_burst: int = Field(default=5, ge=1, le=1000)
    """How many public-key offers one client may send at once."""
    public_global_rate_per_minute: float = Field(default=300.0, gt=0, le=60_000)
    """Offers with the public key per minute from all clients together, per worker (a token
    bucket); 429 beyond: many addresses together cannot make the public key unbounded work."""
    public_global_burst: int = Field(default=50, ge=1, le=10_000)
    """How many public-key offers all clients together may send at once, per worker."""
    browser_ice_servers: list[IceServerSettings] = Field(default_factory=list)
    """STUN/TURN servers the widget's browser uses. A TURN server takes a ``secret`` (the
    TURN REST API's): each page gets credentials that expire after
    ``turn_credential_ttl_s``. A static ``credential`` is refused here: the page is public."""
    turn_credential_ttl_s: int = Field(default=3600, ge=60, le=86_400)
    """How long the TURN credentials minted for one widget page stay valid (the TURN
    server also checks them on each allocation refresh, so it bounds a call's length)."""

    @field_validator("browser_ice_servers")
    @classmethod
    def _no_static_turn_credentials(
        cls, servers: list[IceServerSettings]
    ) -> list[IceServerSettings]:
        for server in servers:
            if server.credential is not None:
                raise ValueError(
                    "browser_ice_servers: a static TURN credential would be public in the "
                    "widget's page; give the TURN server's shared secret as `secret`"
                )
        return servers

    @field_validator("allowed_origins")
    @classmethod
    def _origins(cls, origins: list[str]) -> list[str]:
        return [normalize_origin(o) for o in origins]

    @field_validator("advertised_addresses")
    @classmethod
    def _addresses(cls, addresses: list[str]) -> list[str]:
        return [str(ipaddress.ip_address(a)) for a in addresses]  # raises ValueError

    @field_validator("allowed_peer_networks")
    @classmethod
    def _networks(cls, networks: list[str]) -> list[str]:
        return [str(n) for n in parse_networks(networks)]  # raises ValueError

    @model_validator(mode="after")
    def _consent(self) -> WebRtcSettings:
        if self.consent_interval_s * 2 > self.consent_timeout_s:
            raise ValueError("consent_interval_s must be at most half of consent_timeout_s")
        if (self.media_port_min is None) != (self.media_port_max is None):
            raise ValueError("media_port_min and media_port_max go together")
        low, high = self.media_port_min, self.media_port_max
        if low is not None and high is not None and low > high:
            raise ValueError("media_port_min must not be above media_port_max")
        return self

    def port_range(self) -> PortRange | None:
        """The UDP range for media sockets, or None for any port."""
        if self.media_port_min is None or self.media_port_max is None:
            return None
        return PortRange(self.media_port_min, self.media_port_max)

    def peer_policy(self) -> PeerPolicy:
        """Which remote candidate addresses this edge may send to."""
        return PeerPolicy.from_cidrs(self.allowed_peer_networks)

    def check(self, settings: Settings) -> list[str]:
        if not settings.api.private_key:
            return ["api.private_key: required for POST /webrtc/offer"]
        return []


def normalize_origin(origin: str) -> str:
    """``scheme://host[:port]`` in lower case, default ports dropped; ValueError otherwise."""
    parts = urlsplit(origin.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{origin!r}: an origin is http(s)://host[:port]")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise ValueError(f"{origin!r}: an origin has no path, query or credentials")
    port = parts.port
    default = {"http": 80, "https": 443}[parts.scheme]
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    suffix = f":{port}" if port is not None and port != default else ""
    return f"{parts.scheme}://{host}{suffix}"


def webrtc_settings(settings: Settings) -> WebRtcSettings:
    """The ``webrtc:`` section of ``settings``."""
    section = settings.provider_settings("webrtc")
    assert isinstance(section, WebRtcSettings), "the WebRTC provider is registered"
    return section
