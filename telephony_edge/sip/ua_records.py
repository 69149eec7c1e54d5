"""The sans-I/O SIP user agent's records: its configuration, the actions it returns to
its shell, its counters and the state of one call (:mod:`telephony_edge.sip.ua`)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from telephony_edge.sip.dialog import Address, Dialog
from telephony_edge.sip.family import Family
from telephony_edge.sip.message import Request
from telephony_edge.sip.parse import DEFAULT_LIMITS, Limits
from telephony_edge.sip.refer import Referral
from telephony_edge.sip.register import Status as RegistrationStatus
from telephony_edge.sip.sdes import DEFAULT_RULES, Policy, SrtpRules
from telephony_edge.sip.sdp import (
    LocalSession,
    MediaConfig,
    Negotiated,
    SessionDescription,
)
from telephony_edge.sip.session_timer import Negotiated as SessionTerms
from telephony_edge.sip.session_timer import SessionTimer
from telephony_edge.sip.transaction import (
    DEFAULT_TIMERS,
    Key,
    Timers,
    _Machine,
)
from telephony_edge.sip.trunks import Trunk
from telephony_edge.sip.uri import format_hostport

KNOWN_METHODS = frozenset(
    {
        "INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "INFO", "UPDATE", "NOTIFY",
        "PRACK", "REFER", "REGISTER", "SUBSCRIBE", "MESSAGE", "PUBLISH",
    }
)  # fmt: skip
IN_DIALOG_ONLY = frozenset({"BYE", "INFO", "UPDATE", "NOTIFY", "PRACK"})


@dataclass(frozen=True, slots=True)
class UaConfig:
    host: str = "127.0.0.1"  # advertised in Via and Contact
    host6: str | None = None  # advertised to IPv6 peers by a dual-stack edge (host IPv4)
    port: int = 5060
    user_agent: str = "telephony-edge"
    media: MediaConfig = field(default_factory=MediaConfig)
    timers: Timers = DEFAULT_TIMERS
    limits: Limits = DEFAULT_LIMITS
    max_pending_invites: int = 1000
    max_transactions: int = 20_000  # open ones; beyond, out-of-dialog requests get 503
    invite_timeout: float = 180.0
    allow: tuple[str, ...] = (
        "INVITE",
        "ACK",
        "BYE",
        "CANCEL",
        "OPTIONS",
        "INFO",
        "UPDATE",
        "NOTIFY",
        "PRACK",
    )
    supported: tuple[str, ...] = ("timer", "100rel")
    refer_scheme: str = "tel"  # Refer-To for a number: tel:+1… or sip:+1…@host
    refer_host: str | None = None  # host of sip:+1…@host; default: the caller's From host
    refer_timeout: float = 60.0  # from the REFER's 202 to the final NOTIFY
    refer_refused_bye: bool = True
    min_se: int = 90  # RFC 4028's floor; shorter Session-Expires → 422 / raised
    session_expires: int | None = 1800  # imposed on callers that support timers but ask none
    nat_keepalive: float | None = None  # CRLF pings to callers behind NAT (UDP) this often
    tls_port: int | None = None  # advertised SIP-over-TLS port (None: no TLS listener)
    srtp: Policy = "optional"  # calls without a trunk's own policy (sip/sdes.py)
    srtp_over_plain: bool = False  # SDES keys taken over UDP/TCP too (in the clear)
    dialog_contact: str | None = None  # the proxy in front (sip.dialog_proxy): our Contact

    def host_for(self, family: Family) -> str:
        """Our advertised address to a peer of ``family``: ``host6`` to an IPv6 one on a
        dual-stack edge, else ``host``."""
        return self.host6 if family == 6 and self.host6 else self.host

    def sent_by_for(self, transport: str, family: Family = 4) -> str:
        """Our Via sent-by for ``transport`` to a peer of ``family``: TLS has its own port,
        an IPv6 address is in brackets (RFC 5118)."""
        port = self.tls_port if transport == "TLS" and self.tls_port else self.port
        return format_hostport(self.host_for(family), port)

    def contact(self, transport: str, secure: bool, family: Family = 4) -> str:
        """Our Contact in a dialog over ``transport``: ``sips:`` for a SIPS dialog (RFC 3261
        §12.1.1), ``;transport=tls`` for a ``sip:`` one over TLS (as pjsip and Kamailio);
        the proxy in front when there is one (``dialog_contact``: it finds the call's worker)."""
        if self.dialog_contact is not None:
            return f"<{self.dialog_contact}>"
        sent_by = self.sent_by_for(transport, family)
        if secure:
            return f"<sips:{sent_by}>"
        return f"<sip:{sent_by};transport={transport.lower()}>"

    def srtp_rules(self, transport: str, policy: Policy | None) -> SrtpRules:
        """A call's SRTP rules: ``policy`` (its trunk's) or ours; keys safe over TLS only
        (unless ``srtp_over_plain``)."""
        return SrtpRules(policy or self.srtp, transport == "TLS" or self.srtp_over_plain)


# -- actions -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Send:
    """``data`` to ``dest``; ``uri`` when ``dest`` names a host: the shell resolves that
    URI (RFC 3263) and tells :meth:`UserAgent.unreachable` of ``call`` if it cannot.
    Over TLS the server's certificate must name ``server_name`` (the URI's host when
    there is one; else the address); a connection that cannot be opened is told to
    :meth:`UserAgent.connect_failed`."""

    data: bytes
    dest: Address
    transport: str = "UDP"
    call: str | None = None
    uri: str | None = None
    server_name: str | None = None


@dataclass(frozen=True, slots=True)
class StartCall:
    """A new call, admitted: the shell finds its record (``number`` dialled from
    ``trunk``, or the registered call id) and answers."""

    call: str
    request: Request
    offer: SessionDescription | None
    source: Address
    trunk: Trunk | None = None
    number: str | None = None
    family: Family = 4  # of the call's media: its RTP socket's


@dataclass(frozen=True, slots=True)
class CallRefused:
    """An INVITE not admitted (``status`` None: dropped unanswered), for the log."""

    call_id: str
    source: Address
    status: int | None
    reason: str


@dataclass(frozen=True, slots=True)
class BadMessage:
    """The message just received, refused as the sender's fault (``status`` None:
    dropped), for the shell's bad-input count and warning; ``call`` when it is a call's."""

    reason: str
    status: int | None
    call: str | None = None


@dataclass(frozen=True, slots=True)
class CallConfirmed:
    """The ACK arrived: media may flow (``media`` is set once known)."""

    call: str
    media: Negotiated | None


@dataclass(frozen=True, slots=True)
class MediaUpdated:
    """A new offer/answer (re-INVITE, UPDATE, delayed offer's ACK)."""

    call: str
    media: Negotiated


@dataclass(frozen=True, slots=True)
class InfoReceived:
    call: str
    content_type: str
    body: bytes


DTMF_KEYS = frozenset("0123456789*#ABCD")
_SIGNAL_NUMBERS = {"10": "*", "11": "#", "12": "A", "13": "B", "14": "C", "15": "D"}


def dtmf_from_info(content_type: str, body: bytes) -> str | None:
    """The key of a DTMF INFO: ``application/dtmf-relay`` (``Signal=5``) or
    ``application/dtmf`` (the key alone); None for anything else."""
    ctype = content_type.split(";")[0].strip().lower()
    text = body.decode("ascii", "replace").strip()
    if ctype == "application/dtmf-relay":
        for line in text.splitlines():
            name, _, value = line.partition("=")
            if name.strip().lower() == "signal":
                text = value.strip()
                break
        else:
            return None
    elif ctype != "application/dtmf":
        return None
    key = _SIGNAL_NUMBERS.get(text, text.upper())
    return key if key in DTMF_KEYS else None


@dataclass(frozen=True, slots=True)
class NotifyReceived:
    call: str
    event: str
    content_type: str
    body: bytes


@dataclass(frozen=True, slots=True)
class TransferResult:
    """How the call's REFER ended (once per :meth:`UserAgent.refer`); ``status`` is
    the sipfrag's or the REFER's final status, ``reason`` a line for the agent."""

    call: str
    ok: bool
    status: int
    reason: str


@dataclass(frozen=True, slots=True)
class CallEnded:
    """The call is over. ``reason``: remote_bye, local_bye, cancelled, rejected,
    no_ack, timeout, bad_answer, transferred, refer_refused, session_expired."""

    call: str
    reason: str
    status: int | None = None


@dataclass(frozen=True, slots=True)
class Resolve:
    """Look ``uri`` up (RFC 3263: every address, in order) for ``owner`` (an outbound call's
    ref, or ``register:<account>``) and answer with :meth:`UserAgent.resolved`."""

    owner: str
    uri: str
    transport: str


@dataclass(frozen=True, slots=True)
class CallProgress:
    """An outbound call's provisional response past 100 (180 Ringing, 183 …)."""

    call: str
    status: int
    early_media: bool


@dataclass(frozen=True, slots=True)
class DialFailed:
    """An outbound call was not answered (or its answer could not be used): ``outcome``
    is busy, no-answer, failed or canceled (:mod:`telephony_edge.sip.uac`)."""

    call: str
    outcome: str
    status: int
    reason: str


@dataclass(frozen=True, slots=True)
class RegistrationChanged:
    """A registration's state changed (:class:`telephony_edge.sip.register.Status`)."""

    account: str
    status: RegistrationStatus


Action = (
    Send
    | StartCall
    | CallRefused
    | CallConfirmed
    | MediaUpdated
    | InfoReceived
    | NotifyReceived
    | TransferResult
    | CallEnded
    | Resolve
    | CallProgress
    | DialFailed
    | RegistrationChanged
)


@dataclass(slots=True)
class Stats:
    received: int = 0
    requests: int = 0
    responses: int = 0
    keepalives: int = 0
    answered_400: int = 0
    answered_505: int = 0
    answered_416: int = 0
    dropped: int = 0
    overload_503: int = 0
    challenged_401: int = 0
    refused_403: int = 0
    dropped_unadmitted: int = 0
    retransmissions_absorbed: int = 0
    internal_errors: int = 0
    calls_started: int = 0


class Phase(enum.Enum):
    PENDING = "pending"  # INVITE received, no final answer yet
    ANSWERED = "answered"  # 2xx sent, waiting for the ACK
    CONFIRMED = "confirmed"
    ENDED = "ended"


@dataclass(slots=True)
class Call:
    ref: str
    invite: Request
    tx_key: Key
    source: Address
    transport: str
    dialog: Dialog
    offer: SessionDescription | None
    phase: Phase = Phase.PENDING
    media: Negotiated | None = None
    local: LocalSession | None = None
    awaiting_answer_in_ack: bool = False
    retransmitter: Key | None = None
    invite_deadline: float | None = None
    hangup_reported: bool = False  # CallEnded given; the BYE waits for the ACK
    referral: Referral | None = None
    trunk: Trunk | None = None
    timer_offer: SessionTerms | None = None  # negotiated on the INVITE, started by the 2xx
    reliable: bool = False  # Require: 100rel: provisional responses need PRACK
    rseq: int = 0  # the last RSeq sent
    provisional: Key | None = None  # the unacknowledged reliable provisional's retransmitter
    answer_waits: bool = False  # a 2xx held until the PRACK of a 183 with our SDP
    session: SessionTimer | None = None
    nated: bool = False  # behind NAT: in-dialog requests go to ``source`` (sip/nat.py)
    unreachable: bool = False  # its next hop's name did not resolve: requests to ``source``
    keepalive_at: float | None = None  # the next CRLF ping to a caller behind NAT
    srtp_rules: SrtpRules = DEFAULT_RULES  # its SRTP policy and whether keys travel safely
    family: Family = 4  # of its media (the offer's address, else its signalling's)


@dataclass(slots=True)
class Entry:
    """One open transaction (or retransmitter) of the UA, and where its messages go."""

    machine: _Machine
    dest: Address
    transport: str
    call: str | None
    kind: str  # "invite" | "server" | "client" | "2xx" | "1xx" (reliable provisional)
    ack: bytes | None = None  # a re-INVITE of ours: the ACK of its 2xx, resent for each
    uri: str | None = None  # ``dest`` names a host: the URI the shell resolves
    flow: Address | None = None  # where to send instead if it does not resolve
