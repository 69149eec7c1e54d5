"""The configuration of the edge's own SIP requests: a trunk's ``outbound:`` section (calls
the edge places through it) and ``sip.accounts`` (registrations with a registrar).

Hosts are written as operators write them (``sip.carrier.example``,
``10.0.0.5:5060``) or as SIP URIs (``sip:sbc.carrier.example;transport=tcp;lr``);
:func:`sip_uri_of` makes each a SIP URI, checked at start-up. A name is looked
up per RFC 3263 when it is used (NAPTR, SRV, A), so one host may stand for
several addresses, tried in turn.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from telephony_edge.config_values import normalize_e164
from telephony_edge.sip.uac import hop_transport
from telephony_edge.sip.uri import SipUri

_GROUP_REFERENCE = re.compile(r"\\(\d+)|\\g<(\w+)>")


def sip_uri_of(text: str) -> str:
    """``host``, ``host:port`` or a SIP URI, as a SIP URI (ValueError if it is none)."""
    value = text.strip()
    uri = value if value.lower().startswith(("sip:", "sips:")) else f"sip:{value}"
    parsed = SipUri.parse(uri)  # raises ValueError
    if parsed.scheme not in ("sip", "sips") or not parsed.host:
        raise ValueError(f"{text!r} is not a host or a SIP URI")
    return uri


class NumberRewrite(BaseModel):
    """A number rewritten before it goes on the wire: the first rule whose ``match`` (a
    regular expression) matches the whole number, ``+`` and all, gives ``replace``, where
    ``\\1`` … stand for its groups (``{match: '^\\+1(\\d{10})$', replace: '\\1'}`` drops
    the country code)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    match: str = Field(min_length=1, max_length=200)
    replace: str = Field(max_length=200)

    @model_validator(mode="after")
    def _compiles(self) -> NumberRewrite:
        try:
            pattern = re.compile(self.match)
        except re.error as exc:
            raise ValueError(f"match: not a regular expression ({exc})") from None
        for number, name in _GROUP_REFERENCE.findall(self.replace):
            if (number and int(number) > pattern.groups) or (
                name and name not in pattern.groupindex
            ):
                raise ValueError(f"replace names a group match does not have: {self.replace!r}")
        return self


def rewrite(number: str, rules: list[NumberRewrite]) -> str:
    """``number`` after the first rule that matches it (unchanged if none does)."""
    for rule in rules:
        found = re.fullmatch(rule.match, number)
        if found is not None:
            return found.expand(rule.replace)
    return number


class SipOutboundSettings(BaseModel):
    """How the edge places calls through a trunk (``POST /start_outbound_call`` from one of
    the trunk's numbers)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    proxies: list[str] = Field(min_length=1, max_length=8)
    """The trunk's hosts, tried in this order (each name's addresses in RFC 3263 order):
    a 503, silence for ``sip.outbound_failover_timeout_s`` or a name that does not resolve
    moves on to the next. A URI with ``;lr`` is also sent as the INVITE's Route (an
    outbound proxy in front of the carrier)."""
    domain: str | None = None
    """The host of the Request-URI and To (``sip:+15550100@<domain>``); default: the first
    proxy's host."""
    transport: Literal["udp", "tcp", "tls"] = "udp"
    """For proxies whose URI names no ``;transport=`` (a ``sips:`` URI is TLS). Over TLS
    (all the proxies or none) the proxy's certificate must verify (the system's trust store
    or ``sip.tls_ca_file``) for the proxy's host name, and the edge's TLS listener
    (``sip.tls``) takes the callee's requests in the call; the trunk's ``srtp`` says what
    the offer carries."""
    username: str | None = None
    password: str | None = None
    """With both set, the edge answers the trunk's 401/407 challenges (digest, SHA-256 or
    MD5) with these."""
    realm: str | None = None
    """Answer challenges for this realm only; default: any the trunk names."""
    caller_id: str | None = None
    """The number calls present (From's user part), E.164; default: the call's
    ``from_phone``."""
    from_host: str | None = None
    """From's host; default: the edge's advertised SIP host."""
    number_rewrites: list[NumberRewrite] = Field(default_factory=list, max_length=32)
    """How the dialled number is written in the Request-URI and To."""
    caller_id_rewrites: list[NumberRewrite] = Field(default_factory=list, max_length=32)
    """How the caller id is written in From."""

    @field_validator("proxies")
    @classmethod
    def _proxies(cls, proxies: list[str]) -> list[str]:
        return [sip_uri_of(proxy) for proxy in proxies]

    @field_validator("caller_id")
    @classmethod
    def _caller_id(cls, number: str | None) -> str | None:
        return None if number is None else normalize_e164(number)

    @model_validator(mode="after")
    def _credentials(self) -> SipOutboundSettings:
        if (self.username is None) != (self.password is None):
            raise ValueError("username and password go together")
        if len({hop_transport(proxy, self.transport) == "TLS" for proxy in self.proxies}) > 1:
            raise ValueError(
                "proxies: over TLS all or none (the SDP, with SRTP keys, would reach the "
                "others in the clear)"
            )
        return self

    @property
    def tls(self) -> bool:
        """Its calls go over TLS."""
        return hop_transport(self.proxies[0], self.transport) == "TLS"


class SipAccountSettings(BaseModel):
    """An account the edge keeps registered with a registrar (RFC 3261 §10): calls to its
    address of record reach the edge and go where ``number`` goes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    registrar: str
    """The registrar: ``pbx.example`` (RFC 3263), ``10.0.0.5:5060`` or a SIP URI
    (``;transport=tcp``; ``;lr``: an outbound proxy, also sent as Route)."""
    username: str = Field(min_length=1, max_length=128)
    password: str = Field(min_length=1, max_length=256)
    realm: str | None = None
    """Answer challenges for this realm only; default: any the registrar names."""
    aor: str | None = None
    """The address of record; default: ``sip:<username>@<the registrar's host>``."""
    number: str
    """One of the edge's numbers (``numbers:``, provider ``sip``): calls to the account are
    routed as calls to it (its agent, region, ``agent_config``)."""
    expires_s: int = Field(default=3600, ge=10, le=86_400)
    """The registration's asked lifetime; it is refreshed before the registrar's grant runs
    out (a minute before, or at half of it if that is sooner)."""
    transport: Literal["udp", "tcp"] = "udp"
    """For a registrar whose URI names no ``;transport=``."""
    contact_host: str | None = None
    """``host`` or ``host:port`` in the registered Contact: the proxy in front of the edge
    that the registrar's calls should reach; default: the edge's advertised SIP address."""
    retry_min_s: float = Field(default=5.0, gt=0, le=3600)
    retry_max_s: float = Field(default=300.0, gt=0, le=86_400)
    """After a failure (no answer, an error, refused credentials) the next try comes after
    ``retry_min_s``, doubling up to ``retry_max_s``, with jitter."""

    @field_validator("registrar")
    @classmethod
    def _registrar(cls, registrar: str) -> str:
        return sip_uri_of(registrar)

    @field_validator("number")
    @classmethod
    def _number(cls, number: str) -> str:
        return normalize_e164(number)

    @field_validator("aor")
    @classmethod
    def _aor(cls, aor: str | None) -> str | None:
        if aor is not None and not SipUri.parse(sip_uri_of(aor)).user:
            raise ValueError("the address of record needs a user part (sip:1001@pbx.example)")
        return None if aor is None else sip_uri_of(aor)

    @field_validator("contact_host")
    @classmethod
    def _contact_host(cls, host: str | None) -> str | None:
        if host is not None:
            parsed = SipUri.parse(sip_uri_of(host))
            if parsed.user or parsed.params:
                raise ValueError("contact_host is host or host:port")
        return host

    @model_validator(mode="after")
    def _retries(self) -> SipAccountSettings:
        if self.retry_min_s > self.retry_max_s:
            raise ValueError("retry_min_s must not exceed retry_max_s")
        return self

    @property
    def address_of_record(self) -> str:
        if self.aor is not None:
            return self.aor
        registrar = SipUri.parse(self.registrar)
        return str(SipUri(registrar.scheme, self.username, registrar.host))
