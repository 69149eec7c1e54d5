"""The ``sip:`` section of the configuration.

Everything a worker advertises is configurable (host, SIP port, RTP ports)
because behind NAT or in Kubernetes the address peers must use is not the
one the worker binds.
"""

from __future__ import annotations

import ipaddress

from pydantic import Field, field_validator, model_validator

from telephony_edge.config import ProviderSettings, Settings

SUPPORTED_CODECS = ("G722", "PCMU", "PCMA")  # what the media shell can transcode


class SipSettings(ProviderSettings):
    bind_host: str = "127.0.0.1"
    port: int = Field(default=5060, ge=0, le=65535)
    """UDP port for SIP; 0 takes any free port (tests), and the advertised port follows it."""
    advertised_host: str | None = None
    """The address in Contact, SDP and ``sip_uri`` (the public one behind NAT); default:
    ``bind_host`` (127.0.0.1 when that is a wildcard)."""
    advertised_port: int | None = Field(default=None, ge=1, le=65535)
    rtp_port_min: int = Field(default=20000, ge=1024, le=65534)
    rtp_port_max: int = Field(default=20999, ge=1025, le=65535)
    codecs: tuple[str, ...] = SUPPORTED_CODECS
    """Codec preference, best first (RFC 3264: the offer's order decides unless
    ``codec_order`` is ``local``)."""
    codec_order: str = Field(default="offer", pattern="^(offer|local)$")
    prefer_g722: bool = True
    """G.722 (16 kHz, the edge's own rate: no resampling, twice G.711's bandwidth) is
    taken whenever the offer lists it and ``codecs`` allows it, wherever it stands in
    the offer; the other codecs follow ``codec_order``."""
    registration_ttl_s: float = Field(default=300.0, gt=0, le=86_400)
    """How long a ``register_sip_call`` registration waits for its INVITE."""
    trunk_cidrs: list[str] = Field(default_factory=list)
    """Source networks allowed to send calls to dialled numbers (later step); registered
    call ids are admitted from anywhere, the call id being the secret."""
    default_agent_id: str | None = None
    """The stored agent a ``register_sip_call`` with only ``agent_config`` builds on."""
    ring_s: float = Field(default=0.0, ge=0, le=60)
    """Seconds of ``180 Ringing`` between admitting a call and answering it (0: answer at
    once, no 180)."""
    reject_when_draining: bool = True
    """While draining: new INVITEs get 503 (a trunk fails over) and OPTIONS 503."""

    # -- media (telephony_edge.sip.leg) --
    rtp_timeout_s: float = Field(default=30.0, gt=0, le=3600)
    """No RTP from the caller for this long (hold excepted) ends the call ``timeout``."""

    @field_validator("codecs")
    @classmethod
    def _known_codecs(cls, codecs: tuple[str, ...]) -> tuple[str, ...]:
        upper = tuple(c.upper() for c in codecs)
        unknown = [c for c in upper if c not in SUPPORTED_CODECS]
        if unknown or not upper:
            raise ValueError(f"codecs must be among {', '.join(SUPPORTED_CODECS)}")
        return upper

    @field_validator("trunk_cidrs")
    @classmethod
    def _cidrs(cls, cidrs: list[str]) -> list[str]:
        for cidr in cidrs:
            ipaddress.ip_network(cidr, strict=False)  # raises ValueError
        return cidrs

    @model_validator(mode="after")
    def _range(self) -> SipSettings:
        if self.rtp_port_max - self.rtp_port_min < 1:
            raise ValueError("rtp_port_max must be above rtp_port_min")
        return self

    @property
    def public_host(self) -> str:
        if self.advertised_host:
            return self.advertised_host
        return "127.0.0.1" if self.bind_host in ("0.0.0.0", "::", "") else self.bind_host

    def check(self, settings: Settings) -> list[str]:
        problems = []
        if not settings.api.private_key:
            problems.append("api.private_key: required for POST /register_sip_call")
        if self.default_agent_id and self.default_agent_id not in settings.agents:
            problems.append(f"sip.default_agent_id: unknown agent {self.default_agent_id!r}")
        return problems


def sip_settings(settings: Settings) -> SipSettings:
    """The ``sip:`` section of ``settings``."""
    section = settings.provider_settings("sip")
    assert isinstance(section, SipSettings), "the SIP provider is registered"
    return section
