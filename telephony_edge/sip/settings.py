"""The ``sip:`` section of the configuration.

Everything a worker advertises is configurable (host, SIP port, RTP ports)
because behind NAT or in Kubernetes the address peers must use is not the
one the worker binds.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from telephony_edge.config import ProviderSettings, Settings
from telephony_edge.config_values import normalize_e164
from telephony_edge.sip.family import Family, family_of
from telephony_edge.sip.resolve import nameserver_address
from telephony_edge.sip.settings_outbound import SipAccountSettings, SipOutboundSettings
from telephony_edge.sip.trunks import Trunk
from telephony_edge.sip.uri import SipUri

SUPPORTED_CODECS = ("G722", "PCMU", "PCMA")  # what the media shell can transcode


class SipTrunkSettings(BaseModel):
    """One trunk (carrier or PBX) that may call the edge's SIP numbers, and through which the
    edge may call out (``outbound``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cidrs: list[str] = Field(default_factory=list)
    """Its source networks (``54.172.60.0/30``, ``2001:db8::/32``, ``10.0.0.9/32``);
    required unless the trunk only carries the edge's outbound calls."""
    numbers: list[str] = Field(default_factory=list)
    """The numbers it may call (E.164); empty: every SIP number."""
    username: str | None = None
    password: str | None = None
    """With both set, its INVITEs must pass digest authentication (MD5 or SHA-256)."""
    realm: str | None = None
    """The digest realm; default: the advertised SIP host."""
    algorithms: tuple[Literal["SHA-256", "MD5"], ...] = Field(
        default=("SHA-256", "MD5"), min_length=1
    )
    """Digest algorithms offered, in this order (RFC 8760: SHA-256 first; some clients
    read only the first challenge and know only MD5)."""
    refer_to: Literal["tel", "sip"] | None = None
    """This trunk's Refer-To for numbers; default: ``sip.refer_to``."""
    srtp: Literal["none", "optional", "required"] | None = None
    """This trunk's SRTP policy (``sip.srtp`` says what each means); default: ``sip.srtp``."""
    outbound: SipOutboundSettings | None = None
    """How the edge places calls through this trunk: calls from its numbers (``numbers``,
    or any SIP number when empty) to a phone number go through the first such trunk."""

    @field_validator("cidrs")
    @classmethod
    def _cidrs(cls, cidrs: list[str]) -> list[str]:
        for cidr in cidrs:
            ipaddress.ip_network(cidr, strict=False)  # raises ValueError
        return cidrs

    @field_validator("numbers")
    @classmethod
    def _numbers(cls, numbers: list[str]) -> list[str]:
        return [normalize_e164(n) for n in numbers]

    @model_validator(mode="after")
    def _credentials(self) -> SipTrunkSettings:
        if (self.username is None) != (self.password is None):
            raise ValueError("username and password go together")
        if not self.cidrs and self.outbound is None:
            raise ValueError(
                "cidrs: at least one (or an outbound section for a trunk that "
                "only carries the edge's calls)"
            )
        return self

    def trunk(self, name: str, default_realm: str) -> Trunk:
        return Trunk(
            name=name,
            networks=tuple(ipaddress.ip_network(c, strict=False) for c in self.cidrs),
            numbers=frozenset(self.numbers),
            username=self.username,
            password=self.password,
            realm=self.realm or default_realm,
            algorithms=self.algorithms,
            refer_to=self.refer_to,
            srtp=self.srtp,
        )


class SipSettings(ProviderSettings):
    bind_host: str = "127.0.0.1"
    """The address SIP and RTP listen on: IPv4 (``0.0.0.0``: every interface) or IPv6
    (``::1``, ``::``: an IPv6-only worker; its sockets take no IPv4)."""
    bind_host6: str | None = None
    """An IPv6 address to listen on as well, next to an IPv4 ``bind_host`` (dual stack:
    ``::``, ``::1`` or the node's): SIP over UDP, TCP and TLS on the same ports, and the
    RTP of calls whose media is IPv6 (an IPv6 caller's offer, an outbound call to an IPv6
    address). IPv4 calls are as before."""
    port: int = Field(default=5060, ge=0, le=65535)
    """UDP port for SIP; 0 takes any free port (tests), and the advertised port follows it."""
    tcp: bool = True
    """Listen for SIP over TCP too, on the same port (RFC 3261 §18: responses on the
    connection the request came on)."""
    tcp_max_connections: int = Field(default=1000, ge=1, le=100_000)
    tcp_read_timeout_s: float = Field(default=10.0, gt=0, le=300)
    """How long a TCP connection may take to finish a message it started (slow senders)."""
    tcp_idle_timeout_s: float = Field(default=600.0, gt=0, le=86_400)
    """A TCP connection with nothing received for this long is closed (peers keep theirs
    open with RFC 5626 CRLF keep-alives), unless it carries a live call."""
    tcp_max_per_source: int = Field(default=32, ge=1, le=100_000)
    """Inbound TCP connections one source address may hold; beyond, new ones are closed.
    A full table (``tcp_max_connections``) evicts the connection idle longest that carries
    no call, rather than refuse a newcomer."""
    tcp_first_message_timeout_s: float = Field(default=5.0, gt=0, le=300)
    """An inbound TCP connection that has sent no complete SIP message this long after
    connecting is closed (keep-alive pings do not count)."""
    tls: bool = False
    """Listen for SIP over TLS (RFC 3261 §26) on ``tls_port``, with ``tls_certificate`` and
    ``tls_private_key``; the TCP limits above apply to its connections too. Calls over TLS
    may use SRTP (``srtp``)."""
    tls_port: int = Field(default=5061, ge=0, le=65535)
    """The SIP-over-TLS port; 0 takes any free port (tests)."""
    advertised_tls_port: int | None = Field(default=None, ge=1, le=65535)
    """The TLS port in the Contact and Via of calls over TLS; default: ``tls_port``."""
    tls_certificate: str | None = None
    """The PEM certificate chain the TLS listener presents (its leaf first). Checked at each
    new connection: when the file (or the key) changes, the next connection gets the new
    one; if they do not load, the old one is served and a warning logged."""
    tls_private_key: str | None = None
    """The PEM private key of ``tls_certificate`` (unencrypted; keep the file private)."""
    tls_ca_file: str | None = None
    """CA certificates (PEM) that the servers the edge connects to over TLS must chain to;
    default: the system's trust store. Their name is checked either way."""
    tls_handshake_timeout_s: float = Field(default=5.0, gt=0, le=60)
    """How long a TLS handshake may take; then the connection is closed (bad input)."""
    advertised_host: str | None = None
    """The address in Contact, SDP and ``sip_uri`` (the public one behind NAT); default:
    ``bind_host`` (127.0.0.1 when that is a wildcard)."""
    advertised_host6: str | None = None
    """The IPv6 address in Contact, Via and SDP for IPv6 peers of a dual-stack worker
    (``bind_host6``); default: ``bind_host6`` (``::1`` when that is ``::``). A worker
    whose ``bind_host`` is IPv6 advertises ``advertised_host``."""
    advertised_host_file: str | None = None
    """A file holding ``advertised_host``, read at start-up (surrounding white space
    dropped): the address of this node or pod, written there by whoever knows it (in
    Kubernetes an init container, from the node's annotation or the pod's name; see
    ``k8s/components``). Instead of ``advertised_host``."""
    private_advertised_host: bool = False
    """An advertised address (``advertised_host``, ``advertised_host6``) in a private network
    (RFC 1918, RFC 6598, IPv4 and IPv6 link-local, IPv6 ULA ``fc00::/7``) is refused at
    start-up, since callers on the internet cannot reach it (a cloud node's own address is
    one): set this when it is deliberate (an SBC, or Kamailio with rtpengine, in front of
    the edge; a LAN). Loopback (``127.0.0.1``, ``::1``) is this machine, not refused."""
    advertised_port: int | None = Field(default=None, ge=1, le=65535)
    dialog_proxy: str | None = Field(default=None, max_length=256)
    """The SIP URI of the proxy in front of the workers (Kamailio) that the edge's Contact
    names in every call instead of this worker (``sip:sip.example.com:5060``): the peer's
    requests in a call reach the proxy, which sends them on to the worker that carries the
    call now (the route each worker keeps in Redis, ``<prefix>route:sip:<Call-ID>``; see
    ``sip/examples/kamailio-resume.cfg``). With it a live call survives its worker: another
    worker takes it over and re-INVITEs the caller with its own media (docs/architecture.md,
    SIP, "Calls that outlive their worker"). Needs Redis as the coordinator."""
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
    trunks: dict[str, SipTrunkSettings] = Field(default_factory=dict)
    """The trunks allowed to call the edge's SIP numbers (``numbers:`` with ``provider: sip``),
    by name; registered call ids are admitted from anywhere, the call id being the secret."""
    drop_unknown: bool = False
    """INVITEs neither to a call id nor from an allowed trunk: dropped unanswered (scanners
    learn nothing) rather than answered 403."""
    rate_per_minute: float = Field(default=120.0, gt=0, le=1_000_000)
    """Refused INVITEs (403, 404, dropped) a source outside every trunk may send per minute
    (a token bucket of ``rate_burst``); beyond, all its INVITEs are dropped unanswered until a
    token is back. Admitted calls do not count."""
    rate_burst: int = Field(default=20, ge=1, le=100_000)
    request_rate_per_s: float = Field(default=200.0, gt=0, le=1_000_000)
    """SIP requests of any method one source address may send per second (a token bucket of
    ``request_burst``); beyond, UDP requests are dropped and TCP ones answered 503 with
    ``Retry-After`` (``telephony_edge.sip.ratelimit`` says why). A trunk sending more (one
    address for many calls per second) needs a higher rate."""
    request_burst: int = Field(default=400, ge=1, le=1_000_000)
    trunk_request_rate_per_s: float = Field(default=2000.0, gt=0, le=1_000_000)
    """The same for a source in one of ``trunks``' CIDRs (a carrier, or a proxy such as
    Kamailio in front of the edge, which sends everyone's traffic from its one address):
    buckets of their own, at this rate and ``trunk_request_burst``."""
    trunk_request_burst: int = Field(default=4000, ge=1, le=1_000_000)
    max_transactions: int = Field(default=20_000, ge=100, le=10_000_000)
    """Open SIP transactions (each kept up to 32 s after its answer); beyond, requests
    outside a dialog get 503 with ``Retry-After`` and calls already up go on. Bounds the
    memory a flood from many addresses, each under ``request_rate_per_s``, can take."""
    nonce_ttl_s: float = Field(default=300.0, gt=0, le=86_400)
    """How long a digest challenge's nonce is good for (then ``stale=true``)."""
    digest_max_failures: int = Field(default=20, ge=1, le=1_000_000)
    """Wrong digests one source address may send in ``digest_failure_window_s``; the last
    locks the source out for ``digest_lockout_s`` (its INVITEs to a trunk with credentials
    get 403 unchecked)."""
    digest_max_user_failures: int = Field(default=100, ge=1, le=1_000_000)
    """Wrong digests for one trunk's username from all sources together in the window; the
    last locks the username out, except for sources that authenticated within the lockout."""
    digest_failure_window_s: float = Field(default=300.0, gt=0, le=86_400)
    digest_lockout_s: float = Field(default=900.0, gt=0, le=86_400)
    metadata_headers: list[str] = Field(
        default_factory=lambda: ["X-Twilio-CallSid", "X-Twilio-AccountSid"]
    )
    """``X-`` headers of the INVITE copied into the call's metadata (name as written here;
    values up to 256 characters)."""
    default_agent_id: str | None = None
    """The stored agent a ``register_sip_call`` with only ``agent_config`` builds on."""
    ring_s: float = Field(default=0.0, ge=0, le=60)
    """Seconds of ``180 Ringing`` between admitting a call and answering it (0: answer at
    once, no 180)."""
    early_media: bool = False
    """Send ``183 Session Progress`` with the SDP answer as soon as the call is admitted (early
    media: the trunk opens the media path before the 200), instead of ``180``. With ``Require:
    100rel`` it is sent reliably and the 200 waits for its PRACK (RFC 3262)."""
    refer_to: Literal["tel", "sip"] = "tel"
    """How a transfer to a number is written in REFER's Refer-To: ``tel:+1…`` (PSTN trunks
    such as Twilio's Elastic SIP Trunking with transfer to PSTN) or ``sip:+1…@<refer_host>``
    (PBXs). A ``sip:`` destination is sent as given."""
    refer_host: str | None = None
    """The host of ``sip:+1…@host`` Refer-Tos; default: the host of the caller's From."""
    refer_timeout_s: float = Field(default=60.0, gt=0, le=600)
    """How long after the trunk's 202 the final NOTIFY may take; then the transfer has failed
    and the call goes on."""
    refer_refused: Literal["bye", "continue"] = "bye"
    """A REFER the trunk refuses (≥ 300, or no answer): ``bye`` hangs up (the call ends
    ``error``, the agent having meant to leave), ``continue`` keeps the agent on the call;
    either way the failure is reported to the agent core."""
    session_expires_s: int | None = Field(default=1800, ge=90, le=86_400)
    """RFC 4028: the session interval the edge asks of callers that support session timers
    but propose none (they refresh); None: only when the caller asks. Refreshes are answered
    whatever this says; as refresher (``refresher=uas``) the edge sends UPDATE, or re-INVITE
    to peers without UPDATE, at half the interval."""
    min_se_s: int = Field(default=90, ge=1, le=86_400)
    """The shortest session interval accepted (``Min-SE``; shorter: 422, or raised for callers
    without timer support). RFC 4028 says 90; tests lower it."""
    nat_keepalive_s: float = Field(default=25.0, ge=0, le=3600)
    """A caller behind NAT over UDP (its Contact private, or its Via not where its packets
    come from) gets an empty keep-alive (CRLF CRLF, as pjsip sends) this often while the
    call is up, so its NAT still lets the edge's BYE in at the end of a long call; 0: none."""
    dns_servers: list[str] = Field(default_factory=list)
    """Nameservers (``10.0.0.2``, ``127.0.0.1:5353``) for host names in the Record-Route or
    Contact of a call (RFC 3263: SRV, then A); empty: the system's ``/etc/resolv.conf``.
    ``/etc/hosts`` is read first either way."""
    dns_timeout_s: float = Field(default=5.0, gt=0, le=60)
    """How long one next hop's lookup may take; then that call's requests go to the
    address its INVITE came from and the call ends."""
    srtp: Literal["none", "optional", "required"] = "optional"
    """SRTP with SDES keys (RFC 4568: ``AES_CM_128_HMAC_SHA1_80`` and ``_32``) for calls whose
    trunk says nothing: ``optional`` answers an ``RTP/SAVP(F)`` offer (or ``RTP/AVP`` with
    ``a=crypto``) with SRTP and a plain one with RTP; ``required`` refuses plain RTP (488);
    ``none`` refuses ``RTP/SAVP(F)`` and answers best-effort offers plain. SDES keys travel
    in the SDP, so SRTP is only taken over TLS (``tls``) unless ``srtp_over_plain``."""
    srtp_over_plain: bool = False
    """Take SDES keys over UDP and TCP too. Off (the default), an ``RTP/SAVP`` offer that did
    not come over TLS gets 488: its keys were in clear text, so anyone who saw the INVITE
    can decrypt the call (a proxy in front of the edge on a private network may justify it)."""
    outbound_ring_timeout_s: float = Field(default=60.0, gt=0, le=600)
    """How long an outbound call may ring before the edge CANCELs it (``no-answer``)."""
    outbound_failover_timeout_s: float = Field(default=5.0, gt=0, le=32)
    """An address that sends nothing back to an outbound INVITE, not even ``100 Trying``,
    for this long is given up: the next address or proxy is tried (RFC 3263)."""
    accounts: dict[str, SipAccountSettings] = Field(default_factory=dict)
    """Accounts the edge keeps registered (RFC 3261 §10), by name: one worker of the
    cluster holds each registration at a time (a lease in the coordinator)."""
    reject_when_draining: bool = True
    """While draining: new INVITEs get 503 (a trunk fails over) and OPTIONS 503."""

    # -- media (telephony_edge.sip.leg) --
    rtp_timeout_s: float = Field(default=30.0, gt=0, le=3600)
    """No RTP from the caller for this long (hold excepted) ends the call ``timeout``."""
    jitter_max_ms: int = Field(default=200, ge=20, le=1000)
    """The most the jitter buffer may delay a caller's audio. Its delay follows the measured
    jitter (95th percentile plus 5 ms), from 20 ms up to this."""
    rtp_learn_packets: int = Field(default=4, ge=2, le=32)
    """Strict RTP: a source other than the SDP's address (a caller behind NAT) becomes the
    call's peer only after this many consecutive in-sequence packets of one SSRC (Asterisk's
    ``strictrtp=seqno`` probation); its packets are held meanwhile, not lost."""
    rtp_learn_window_s: float = Field(default=10.0, gt=0, le=300)
    """How long after answer, or after a re-INVITE/UPDATE that moves media, such a source may
    be learned; after that only the SDP's address is taken. Once there is a peer, packets from
    anywhere else are dropped (``telephony_edge_rtp_foreign_packets_total``)."""

    @field_validator("codecs")
    @classmethod
    def _known_codecs(cls, codecs: tuple[str, ...]) -> tuple[str, ...]:
        upper = tuple(c.upper() for c in codecs)
        unknown = [c for c in upper if c not in SUPPORTED_CODECS]
        if unknown or not upper:
            raise ValueError(f"codecs must be among {', '.join(SUPPORTED_CODECS)}")
        return upper

    @field_validator("metadata_headers")
    @classmethod
    def _x_headers(cls, names: list[str]) -> list[str]:
        for name in names:
            if not name.lower().startswith("x-") or not name.replace("-", "").isalnum():
                raise ValueError(f"{name!r}: only X- headers go into the metadata")
        return names

    @field_validator("dialog_proxy")
    @classmethod
    def _proxy_uri(cls, uri: str | None) -> str | None:
        if uri is None:
            return None
        try:
            parsed = SipUri.parse(uri)
        except ValueError:
            raise ValueError(f"{uri!r} is not a SIP URI") from None
        if parsed.scheme not in ("sip", "sips") or not parsed.host:
            raise ValueError(f"{uri!r}: a sip: or sips: URI with the proxy's host")
        return uri

    @field_validator("dns_servers")
    @classmethod
    def _nameservers(cls, servers: list[str]) -> list[str]:
        for server in servers:
            nameserver_address(server)  # raises ValueError
        return servers

    @model_validator(mode="before")
    @classmethod
    def _read_advertised_host(cls, data: Any) -> Any:
        path = data.get("advertised_host_file") if isinstance(data, dict) else None
        if not path:
            return data
        if data.get("advertised_host"):
            raise ValueError("set advertised_host or advertised_host_file, not both")
        try:
            host = Path(path).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ValueError(f"advertised_host_file: cannot read {path}: {exc.strerror}") from None
        if not host or any(c.isspace() for c in host):
            raise ValueError(f"advertised_host_file: {path} holds no address")
        return {**data, "advertised_host": host}

    @model_validator(mode="after")
    def _range(self) -> SipSettings:
        if self.rtp_port_max - self.rtp_port_min < 1:
            raise ValueError("rtp_port_max must be above rtp_port_min")
        if self.tls and not (self.tls_certificate and self.tls_private_key):
            raise ValueError("tls needs tls_certificate and tls_private_key")
        for name, trunk in self.trunks.items():
            if trunk.outbound is not None and trunk.outbound.tls and not self.tls:
                raise ValueError(
                    f"trunks.{name}.outbound goes over TLS: that needs tls (the listener "
                    "where the callee's requests in the call arrive)"
                )
        return self

    @model_validator(mode="after")
    def _families(self) -> SipSettings:
        """Each address in its family: what a peer of one family is told must be of it."""
        family = family_of(self.bind_host)
        if family == 6 and not _is_ip(self.bind_host, 6):
            raise ValueError(f"bind_host: {self.bind_host!r} is no IPv6 address")
        if self.advertised_host and family_of(self.advertised_host) != family:
            # (a name is taken for IPv4 only: the SDP's c= would not say which family)
            raise ValueError(
                f"advertised_host: {self.advertised_host} is not IPv{family} as bind_host is"
                + (" (an IPv6 one goes in advertised_host6)" if family == 4 else "")
            )
        if self.bind_host6 is not None:
            if family == 6:
                raise ValueError("bind_host6 goes with an IPv4 bind_host (dual stack)")
            if not _is_ip(self.bind_host6, 6):
                raise ValueError(f"bind_host6: {self.bind_host6!r} is no IPv6 address")
        if self.advertised_host6 is not None:
            if self.bind_host6 is None:
                raise ValueError("advertised_host6 goes with bind_host6 (dual stack)")
            if not _is_ip(self.advertised_host6, 6):
                raise ValueError(f"advertised_host6: {self.advertised_host6!r} is no IPv6 address")
        return self

    @property
    def public_host(self) -> str:
        """The address advertised (to peers of ``bind_host``'s family)."""
        if self.advertised_host:
            return self.advertised_host
        if self.bind_host in ("0.0.0.0", ""):
            return "127.0.0.1"
        return "::1" if self.bind_host == "::" else self.bind_host

    @property
    def public_host6(self) -> str | None:
        """The IPv6 address advertised to IPv6 peers of a dual-stack worker (else None)."""
        if self.bind_host6 is None:
            return None
        if self.advertised_host6:
            return self.advertised_host6
        return "::1" if self.bind_host6 == "::" else self.bind_host6

    @property
    def bind_hosts(self) -> dict[Family, str]:
        """The address SIP and RTP listen on in each of the worker's families."""
        hosts: dict[Family, str] = {family_of(self.bind_host): self.bind_host}
        if self.bind_host6 is not None:
            hosts[6] = self.bind_host6
        return hosts

    def check(self, settings: Settings) -> list[str]:
        problems = self._advertised_problems()
        if not settings.api.private_key:
            problems.append("api.private_key: required for POST /register_sip_call")
        if self.default_agent_id and self.default_agent_id not in settings.agents:
            problems.append(f"sip.default_agent_id: unknown agent {self.default_agent_id!r}")
        sip_numbers = {n for n, r in settings.numbers.items() if r.provider == "sip"}
        for name, trunk in self.trunks.items():
            for number in set(trunk.numbers) - sip_numbers:
                problems.append(f"sip.trunks.{name}.numbers: {number} is no SIP number")
        for name, account in self.accounts.items():
            if account.number not in sip_numbers:
                problems.append(f"sip.accounts.{name}.number: {account.number} is no SIP number")
        return problems

    def _advertised_problems(self) -> list[str]:
        """An address callers could not reach, unless the configuration says it is meant."""
        from telephony_edge.sip.nat import is_private

        problems = []
        for name, bound, advertised, host in (
            ("", self.bind_host, self.advertised_host, self.public_host),
            ("6", self.bind_host6, self.advertised_host6, self.public_host6),
        ):
            if bound is None or host is None:
                continue
            if advertised is None and bound in ("0.0.0.0", "::", ""):
                problems.append(
                    f"sip.advertised_host{name}: required when sip.bind_host{name} is a "
                    "wildcard (the address callers reach this worker at: a public one, per "
                    "node or pod)"
                )
            elif is_private(host) and not self.private_advertised_host:
                problems.append(
                    f"sip.advertised_host{name}: {host} is a private address, which callers "
                    "on the internet cannot reach (set the public one; or, if an SBC or a LAN "
                    "makes it right, sip.private_advertised_host: true)"
                )
        return problems


def _is_ip(host: str, version: int) -> bool:
    """``host`` is an IP address of ``version`` (4 or 6)."""
    try:
        return ipaddress.ip_address(host).version == version
    except ValueError:
        return False


def sip_settings(settings: Settings) -> SipSettings:
    """The ``sip:`` section of ``settings``."""
    section = settings.provider_settings("sip")
    assert isinstance(section, SipSettings), "the SIP provider is registered"
    return section
