"""The edge's SIP user agent (UAS), sans-I/O in the manner of h11.

Theory of operation
-------------------
:class:`UserAgent` holds every transaction, dialog and call of one worker's
SIP side. Its I/O shell (the asyncio transport of a later step) feeds it:

* :meth:`UserAgent.receive` — one datagram (or one framed TCP message), the
  address it came from, the transport and the current time;
* :meth:`UserAgent.tick` — the current time, at or after
  :meth:`UserAgent.next_deadline`;
* the call-control verbs :meth:`ringing`, :meth:`answer`, :meth:`reject`,
  :meth:`progress` (183 with SDP, early media), :meth:`hangup`, :meth:`refer`,
  :meth:`send_request` and :meth:`set_draining`.

Each returns a list of :data:`Action`\\ s: :class:`Send` (bytes to an address
on a transport) and the call events for the shell (:class:`StartCall`,
:class:`CallConfirmed`, :class:`MediaUpdated`, :class:`InfoReceived`,
:class:`NotifyReceived`, :class:`TransferResult`, :class:`CallEnded`). There is no socket, no task
and no clock inside; every timer is a deadline the shell learns from
:meth:`next_deadline`.

Rules
-----
* Nothing raises out of :meth:`receive` or :meth:`tick`. A malformed request
  is answered 400 (505 for another SIP version, 416 for a strange URI
  scheme) when :func:`~telephony_edge.sip.message.parse_message` says a
  response can be built, and dropped otherwise; both are counted in
  :class:`Stats`. An internal error is counted and the packet dropped: one
  bad packet never disturbs another call. Whatever the UA refuses as the
  sender's fault (malformed, unknown method, unreadable SDP, Contact or
  Session-Expires) is noted in :attr:`UserAgent.last_bad` as a
  :class:`BadMessage` for the shell to count and log as bad input; only an
  internal error leaves :attr:`UserAgent.last_error` (a traceback).
* Routing order for a request (§8.2, §17.2.3): the transaction it belongs to
  (a retransmission goes to its transaction and nowhere else, so a duplicate
  INVITE never makes a second call and a resent BYE gets the same 200);
  CANCEL to the INVITE it names; ACK to its INVITE transaction (non-2xx) or to
  the dialog (2xx); then method checks (501 unknown, 405 not allowed,
  420 unknown ``Require``); then the dialog (To tag) or a new call.
* A call is announced once (:class:`StartCall`) and ended once
  (:class:`CallEnded`), whatever happens; after its end the verbs do nothing
  (a late answer after CANCEL sends nothing).
* Session timers (RFC 4028, :mod:`~telephony_edge.sip.session_timer`): the
  2xx to the INVITE and to every refresh says the interval and the refresher;
  as refresher the edge sends UPDATE (re-INVITE when the peer does not allow
  UPDATE) at half the interval; when the peer refreshes and nothing comes in
  time, or a refresh of ours fails, the edge sends BYE (``session_expired``).
* Reliable provisional responses (RFC 3262) for an INVITE with ``Require:
  100rel``: 180/183 carry ``Require: 100rel`` and ``RSeq``, resent T1, 2T1 …
  (capped at T2, as a 2xx) until the PRACK whose ``RAck`` names them (200),
  and the INVITE is refused 504 if none comes in 64*T1. A 2xx waits for the
  PRACK of a reliable 183 that carried our SDP (§3).
* Who may call is :class:`~telephony_edge.sip.trunks.Admission`'s decision on
  a new INVITE, before any state: admitted (:class:`StartCall` names the
  trunk and dialled number, if any), challenged 401 or refused 403 through an
  INVITE transaction of its own (so its ACK and retransmissions are absorbed),
  or dropped unanswered; each refusal is a :class:`CallRefused` for the log.
* Pending INVITEs are bounded: past ``max_pending_invites`` a new INVITE gets
  503 (stateless, counted), and an INVITE the shell leaves unanswered for
  ``invite_timeout`` gets 480 (Timer C's idea on the UAS side). Open
  transactions are bounded too: past ``max_transactions`` a request outside
  a dialog gets 503 with ``Retry-After`` (stateless, noted as a
  :class:`BadMessage`), while requests in a dialog go on, so a flood from
  many addresses (each under its own rate) cannot grow the table for ever.
* A transfer (:meth:`refer`) is one REFER at a time per call, followed to its
  end, reported once as :class:`TransferResult`: the trunk's NOTIFY sipfrag 2xx
  (or its BYE after accepting) is success and the edge's part ends
  (``transferred``: the edge sends BYE); a sipfrag ≥ 300, or no final NOTIFY
  within ``refer_timeout``, is failure and the call goes on; a REFER refused
  (≥ 300 or no answer) is failure and, with ``refer_refused_bye``, the edge
  hangs up (``refer_refused``) rather than keep a caller the agent meant to
  hand over.
* Responses go where §18.2.2 and RFC 3581 say: over TCP on the connection
  (the source), over UDP to ``received``/``rport`` of the top Via, which the
  UA writes from the packet's source (a sender's own ``received`` is never
  trusted). In-dialog requests go to the route set or target, or to the
  INVITE's source for a caller behind NAT: :mod:`telephony_edge.sip.nat`.
"""

from __future__ import annotations

import enum
import itertools
import re
import secrets
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

from telephony_edge.sip.body import sdp_body
from telephony_edge.sip.dialog import Address, Dialog, DialogState
from telephony_edge.sip.message import (
    DEFAULT_LIMITS,
    Limits,
    NameAddr,
    ParseError,
    Request,
    Response,
    build_response,
    is_digits,
    parse_message,
)
from telephony_edge.sip.nat import (
    behind_nat,
    in_dialog_dest,
    ip_literal,
    response_dest,
    stamp_via,
)
from telephony_edge.sip.refer import Referral, is_refer_event, refer_to_uri, sipfrag_status
from telephony_edge.sip.sdp import (
    LocalSession,
    MediaConfig,
    Negotiated,
    NoCommonCodec,
    SdpError,
    SessionDescription,
    accept_answer,
    negotiate,
    parse_sdp,
)
from telephony_edge.sip.session_timer import Negotiated as SessionTerms
from telephony_edge.sip.session_timer import SessionTimer, TooSmall, session_expires
from telephony_edge.sip.session_timer import negotiate as negotiate_timer
from telephony_edge.sip.transaction import (
    DEFAULT_TIMERS,
    InviteClientTransaction,
    InviteServerTransaction,
    Key,
    NonInviteClientTransaction,
    NonInviteServerTransaction,
    Output,
    PassUp,
    State,
    Terminated,
    TimedOut,
    Timers,
    Transmit,
    Uas2xxRetransmitter,
    _Machine,
    cancel_target,
    client_key,
    server_key,
)
from telephony_edge.sip.trunks import Admission, Decision, Trunk, Verdict
from telephony_edge.sip.tx_table import TransactionTable

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

    @property
    def sent_by(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


# -- actions -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Send:
    """``data`` to ``dest``; ``uri`` when ``dest`` names a host: the shell resolves that
    URI (RFC 3263) and tells :meth:`UserAgent.unreachable` of ``call`` if it cannot."""

    data: bytes
    dest: Address
    transport: str = "UDP"
    call: str | None = None
    uri: str | None = None


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


@dataclass(slots=True)
class _Entry:
    machine: _Machine
    dest: Address
    transport: str
    call: str | None
    kind: str  # "invite" | "server" | "client" | "2xx" | "1xx" (reliable provisional)
    ack: bytes | None = None  # a re-INVITE of ours: the ACK of its 2xx, resent for each
    uri: str | None = None  # ``dest`` names a host: the URI the shell resolves
    flow: Address | None = None  # where to send instead if it does not resolve


class UserAgent:
    """See the module docstring."""

    def __init__(
        self,
        config: UaConfig | None = None,
        new_id: Callable[[], str] | None = None,
        admission: Admission | None = None,
    ) -> None:
        self.config = config or UaConfig()
        self.admission = admission
        self._new_id = new_id or (lambda: secrets.token_hex(8))
        self.stats = Stats()
        self.draining = False
        self.last_error: str | None = None
        self.last_bad: BadMessage | None = None
        self._machines: TransactionTable[_Entry] = TransactionTable()
        self._calls: dict[str, Call] = {}
        self._dialogs: dict[tuple[str, str, str], str] = {}
        self._origins: dict[tuple[str, str, int], str] = {}  # (Call-ID, From tag, CSeq)
        self._pending = 0
        self._seq = itertools.count(1)

    # -- inspection ---------------------------------------------------------------

    @property
    def pending_invites(self) -> int:
        return self._pending

    @property
    def open_transactions(self) -> int:
        """How full the table ``max_transactions`` bounds is."""
        return len(self._machines)

    def calls(self) -> dict[str, Call]:
        return dict(self._calls)

    def next_deadline(self) -> float | None:
        first = self._machines.next_deadline()
        deadlines = [] if first is None else [first]
        for call in self._calls.values():
            if call.invite_deadline is not None:
                deadlines.append(call.invite_deadline)
            if call.referral is not None and call.referral.deadline is not None:
                deadlines.append(call.referral.deadline)
            if call.session is not None and call.session.deadline is not None:
                deadlines.append(call.session.deadline)
            if call.keepalive_at is not None:
                deadlines.append(call.keepalive_at)
        return min(deadlines, default=None)

    # -- input ------------------------------------------------------------------------

    def receive(
        self, data: bytes, source: Address, now: float, transport: str = "UDP"
    ) -> list[Action]:
        """One message from ``source``; never raises."""
        self.stats.received += 1
        try:
            return self._receive(data, source, now, transport.upper())
        except Exception:  # a bug must not take the worker's SIP side down
            self._note_error()
            self.stats.dropped += 1
            return []

    def tick(self, now: float) -> list[Action]:
        """Fire every timer due at ``now``; never raises."""
        actions: list[Action] = []
        try:
            while (key := self._machines.pop_due(now)) is not None:
                entry = self._machines.get(key)
                try:
                    if entry is not None:
                        actions += self._outputs(key, entry, entry.machine.tick(now), now)
                finally:
                    self._machines.touch(key)  # its next timer, even if the tick raised
            for call in list(self._calls.values()):
                if call.invite_deadline is not None and call.invite_deadline <= now:
                    call.invite_deadline = None
                    actions += self._final(call, 480, now, "timeout")
                referral = call.referral
                if referral is not None and referral.deadline and referral.deadline <= now:
                    call.referral = None
                    reason = "no final NOTIFY from the trunk in time"
                    actions.append(TransferResult(call.ref, False, 408, reason))
                session = call.session
                if session is not None and session.deadline and session.deadline <= now:
                    session.deadline = None
                    if session.refresh is not None:  # our refresh got no final answer
                        self._machines.pop(session.refresh, None)
                        session.refresh = None
                        actions += self._bye(call, now, "session_expired")
                    elif session.we_refresh and call.phase is Phase.CONFIRMED:
                        actions += self._send_refresh(call, session, now)
                    else:
                        actions += self._bye(call, now, "session_expired")
                if call.keepalive_at is not None and call.keepalive_at <= now:
                    actions.append(Send(b"\r\n\r\n", call.source, call.transport, call.ref))
                    self._arm_keepalive(call, now)
        except Exception:
            self._note_error()
        return actions

    def _note_error(self) -> None:
        """Count an internal error and keep its traceback for the shell to log."""
        self.stats.internal_errors += 1
        self.last_error = traceback.format_exc()

    # -- call control (from the shell) ---------------------------------------------

    def ringing(self, ref: str, now: float) -> list[Action]:
        call = self._calls.get(ref)
        if call is None or call.phase is not Phase.PENDING or call.provisional:
            return []
        return self._provisional(call, 180, b"", now)

    def progress(self, ref: str, rtp_port: int, now: float) -> list[Action]:
        """183 Session Progress with our SDP answer (early media); the 2xx repeats it.
        Only for an INVITE with an offer, and once."""
        call = self._calls.get(ref)
        if (
            call is None
            or call.phase is not Phase.PENDING
            or call.local is not None
            or call.offer is None
            or call.media is None
        ):
            return []
        call.local = self._local_session(rtp_port)
        body = call.local.answer(call.offer, call.media)
        return self._provisional(call, 183, body, now)

    def answer(self, ref: str, rtp_port: int, now: float) -> list[Action]:
        """200 with our SDP (the answer, or our offer for a delayed offer).
        Does nothing once the call is over (a late answer after CANCEL)."""
        call = self._calls.get(ref)
        if call is None or call.phase is not Phase.PENDING:
            return []
        call.local = call.local or self._local_session(rtp_port)
        if call.provisional is not None:
            entry = self._machines.get(call.provisional)
            machine = entry.machine if entry is not None else None
            if isinstance(machine, Uas2xxRetransmitter) and machine.response.body:
                call.answer_waits = True  # §3: not before the PRACK of our SDP
                return []
            self._machines.pop(call.provisional, None)  # the 2xx supersedes a plain 180
            call.provisional = None
        if call.offer is not None and call.media is not None:
            body = call.local.answer(call.offer, call.media)
        else:
            body = call.local.offer()
            call.awaiting_answer_in_ack = True
        terms, call.timer_offer = call.timer_offer, None
        actions = self._send_2xx(call, call.invite, call.tx_key, body, now, terms)
        self._start_timer(call, terms, now)
        return actions

    def reject(self, ref: str, code: int, now: float) -> list[Action]:
        call = self._calls.get(ref)
        if call is None or call.phase is not Phase.PENDING or not 300 <= code <= 699:
            return []
        return self._final(call, code, now, "rejected")

    def hangup(self, ref: str, now: float) -> list[Action]:
        """End the call from the edge: BYE when answered, 480 while pending."""
        call = self._calls.get(ref)
        if call is None or call.phase is Phase.ENDED or call.hangup_reported:
            return []
        if call.phase is Phase.PENDING:
            return self._final(call, 480, now, "local_bye")
        if call.phase is Phase.ANSWERED:
            # §15: no BYE before the ACK (or the 2xx's give-up); the shell is done now
            call.hangup_reported = True
            return [CallEnded(call.ref, "local_bye")]
        return self._bye(call, now, "local_bye")

    def refer(self, ref: str, destination: str, now: float) -> list[Action]:
        """Ask the peer to call ``destination`` (E.164 or ``sip:`` URI) in the caller's
        place: REFER, answered by :class:`TransferResult` (see the rules above)."""
        call = self._calls.get(ref)
        if call is None or call.phase is not Phase.CONFIRMED or call.hangup_reported:
            return [TransferResult(ref, False, 481, "the call is not up")]
        if call.referral is not None:
            return [TransferResult(ref, False, 491, "a transfer is already under way")]
        dialog = call.dialog
        try:
            remote_host = NameAddr.parse(dialog.remote_uri).sip_uri().host
        except ValueError:
            remote_host = call.source[0]
        host = self.config.refer_host or remote_host
        scheme = (call.trunk.refer_to if call.trunk else None) or self.config.refer_scheme
        target = refer_to_uri(destination, scheme, host)
        referred_by = NameAddr.parse(dialog.local_uri).uri
        headers = [("Refer-To", f"<{target}>"), ("Referred-By", f"<{referred_by}>")]
        key, actions = self._start_client(call, "REFER", now, headers)
        call.referral = Referral(key, target)
        return actions

    def send_request(
        self,
        ref: str,
        method: str,
        now: float,
        headers: list[tuple[str, str]] | None = None,
        body: bytes = b"",
    ) -> list[Action]:
        """INFO, NOTIFY, UPDATE … inside the call's dialog."""
        call = self._calls.get(ref)
        if call is None or call.phase is not Phase.CONFIRMED or call.hangup_reported:
            return []
        return self._client(call, method, now, headers, body)

    def set_draining(self, draining: bool) -> None:
        self.draining = draining

    def unreachable(self, ref: str, now: float) -> list[Action]:
        """The shell could not resolve the next hop of the call's dialog (its Send's
        ``uri``). What the call still has to send goes to the flow its INVITE came from
        (a BYE there releases the caller where anything can), and a call still up ends
        ``unreachable`` with a BYE sent that way: one name fails one call, no other.
        Never raises (the shell calls it from its send path)."""
        actions: list[Action] = []
        try:
            self._unreachable(ref, now, actions)
        except Exception:
            self._note_error()
        return actions

    def _unreachable(self, ref: str, now: float, actions: list[Action]) -> None:
        for key in list(self._machines):  # O(open transactions): once per failed call
            entry = self._machines[key]
            machine = entry.machine
            if entry.call != ref or entry.uri is None or entry.flow is None:
                continue
            entry.dest, entry.uri = entry.flow, None
            if isinstance(
                machine, (NonInviteClientTransaction, InviteClientTransaction)
            ) and machine.state in (State.TRYING, State.CALLING, State.PROCEEDING):
                actions.append(Send(machine.request.to_bytes(), entry.dest, entry.transport))
        call = self._calls.get(ref)
        if call is None or call.unreachable:
            return
        call.unreachable = True
        if call.phase is Phase.CONFIRMED and not call.hangup_reported:
            actions += self._bye(call, now, "unreachable")

    # -- receiving --------------------------------------------------------------------

    def _receive(self, data: bytes, source: Address, now: float, transport: str) -> list[Action]:
        if not data.strip(b"\r\n"):
            self.stats.keepalives += 1
            return (
                [Send(b"\r\n", source, transport)]
                if data == b"\r\n\r\n" and transport != "UDP"
                else []
            )
        try:
            message = parse_message(data, self.config.limits)
        except ParseError as err:
            return self._malformed(err, source, transport)
        if isinstance(message, Response):
            self.stats.responses += 1
            return self._on_response(message, now)
        self.stats.requests += 1
        return self._on_request(message, source, now, transport)

    def _bad(self, reason: str, status: int | None, call: str | None = None) -> None:
        self.last_bad = BadMessage(reason, status, call)

    def _malformed(self, err: ParseError, source: Address, transport: str) -> list[Action]:
        self._bad(_unquoted(err.reason), err.status if err.answerable else None)
        if err.request is None or err.status is None:
            self.stats.dropped += 1
            return []
        req = err.request
        status = err.status
        counter = {400: "answered_400", 505: "answered_505", 416: "answered_416"}[status]
        setattr(self.stats, counter, getattr(self.stats, counter) + 1)
        reason = "Bad Request" if status == 400 else None
        extra = (
            [("Warning", f'399 {self.config.host} "{_quote(err.reason)}"')] if status == 400 else []
        )
        try:
            stamp_via(req, source)  # RFC 3581: the 400 goes back where the request came from
            dest = response_dest(req.top_via(), source, transport)
        except ValueError:
            dest = source
        response = build_response(req, status, reason, extra, to_tag=self._new_id())
        return [Send(response.to_bytes(), dest, transport)]

    def _on_request(
        self, req: Request, source: Address, now: float, transport: str
    ) -> list[Action]:
        stamp_via(req, source)
        key = server_key(req)
        entry = self._machines.get(key)
        method = req.method

        if method == "ACK":
            machine = entry.machine if entry is not None else None
            if (
                entry is not None
                and isinstance(machine, InviteServerTransaction)
                and machine.state in (State.COMPLETED, State.CONFIRMED)
            ):
                return self._outputs(key, entry, machine.receive_ack(now), now)
            return self._ack_2xx(req, now)

        if entry is not None:  # a retransmission: its transaction answers, nothing else
            self.stats.retransmissions_absorbed += 1
            machine = entry.machine
            if isinstance(machine, (InviteServerTransaction, NonInviteServerTransaction)):
                return self._outputs(key, entry, machine.receive_request(now), now)
            return []

        dest = response_dest(req.top_via(), source, transport)
        full = len(self._machines) >= self.config.max_transactions
        if full and req.to().tag is None and method != "CANCEL":
            self.stats.overload_503 += 1
            self._bad("the edge's transaction table is full", 503)
            headers = [("Retry-After", "5")]
            response = build_response(req, 503, None, headers, to_tag=self._new_id())
            return [Send(response.to_bytes(), dest, transport)]  # stateless: keeps no state
        if method == "CANCEL":
            return self._cancel(req, key, dest, transport, now)
        if method not in KNOWN_METHODS:
            self._bad("unknown method", 501)
            allow = [("Allow", ", ".join(self.config.allow))]  # RFC 4475 §3.1.1.2
            return self._answer_tx(req, key, dest, transport, 501, now, allow)
        if method not in self.config.allow:
            allow = [("Allow", ", ".join(self.config.allow))]
            return self._answer_tx(req, key, dest, transport, 405, now, allow)
        unsupported = [
            r for r in req.headers.get_all("Require") if r.lower() not in self.config.supported
        ]
        if unsupported:
            extra = [("Unsupported", ", ".join(unsupported))]
            return self._answer_tx(req, key, dest, transport, 420, now, extra)

        to_tag = req.to().tag
        if to_tag is not None:
            return self._in_dialog(req, key, dest, transport, source, now)
        if method == "OPTIONS":
            code = 503 if self.draining else 200
            return self._answer_tx(req, key, dest, transport, code, now, self._capabilities())
        if method == "INVITE":
            return self._new_call(req, key, dest, transport, source, now)
        return self._answer_tx(req, key, dest, transport, 481, now)

    def _new_call(
        self, req: Request, key: Key, dest: Address, transport: str, source: Address, now: float
    ) -> list[Action]:
        origin = (req.call_id(), req.from_().tag or "", req.cseq().seq)
        if origin in self._origins:
            first = self._calls.get(self._origins[origin])
            if (
                first is not None
                and first.tx_key in self._machines  # its transaction is still going on
                and first.invite.top_via().branch != req.top_via().branch
            ):
                # the same request by another path (a forking proxy's copies met again):
                # merged, 482 (RFC 3261 §8.2.2.2), never a second call
                response = build_response(req, 482, None, [], to_tag=self._new_id())
                return [Send(response.to_bytes(), dest, transport)]
            # a retransmission, or a copy after its transaction ended: absorbed
            self.stats.retransmissions_absorbed += 1
            return []
        if self.draining or self._pending >= self.config.max_pending_invites:
            self.stats.overload_503 += 1
            response = build_response(req, 503, None, [("Retry-After", "5")], to_tag=self._new_id())
            return [Send(response.to_bytes(), dest, transport)]  # stateless: keeps no state
        verdict = (
            self.admission.check(req, source, now) if self.admission else Verdict(Decision.ADMIT)
        )
        invite_tx = InviteServerTransaction(req, transport != "UDP", self.config.timers)
        entry = _Entry(invite_tx, dest, transport, None, "invite")
        if verdict.decision is Decision.DROP:
            self.stats.dropped_unadmitted += 1
            return [CallRefused(req.call_id(), source, None, verdict.reason)]
        if verdict.decision is not Decision.ADMIT:
            self._machines[key] = entry
            if verdict.decision is Decision.CHALLENGE:
                self.stats.challenged_401 += 1
                code = 401
            else:
                self.stats.refused_403 += 1
                code = 403
            extra = [*verdict.headers, ("Server", self.config.user_agent)]
            response = build_response(req, code, None, extra, to_tag=self._new_id())
            return [
                *self._outputs(key, entry, invite_tx.respond(response, now), now),
                CallRefused(req.call_id(), source, code, verdict.reason),
            ]
        self._machines[key] = entry
        actions = self._outputs(key, entry, invite_tx.respond(build_response(req, 100), now), now)

        offer: SessionDescription | None = None
        media: Negotiated | None = None
        code = 0
        if req.body:
            sdp = sdp_body(req.headers.get("Content-Type") or "", req.body)
            if sdp is None:
                code = 415
                self._bad("a body that is not SDP", code)
            else:
                try:
                    offer = parse_sdp(sdp)
                    media = negotiate(offer, self.config.media)
                except NoCommonCodec:
                    code = 488
                except ValueError as exc:  # SdpError, or a number int() refuses
                    code = 400
                    self._bad(f"bad SDP: {_sdp_reason(exc)}", code)
        ref = self._new_id()
        contact = f"<sip:{self.config.sent_by};transport={transport.lower()}>"
        try:
            dialog = Dialog.from_invite(req, ref, contact, next(self._seq))
            dialog.validate()
        except ValueError:  # a bad Contact or Record-Route: no dialog can be kept
            self._bad("bad Contact or Record-Route", 400)
            response = build_response(req, 400, None, [], to_tag=ref)
            return actions + self._tx_respond(key, response, now)
        call = Call(ref, req, key, source, transport, dialog, offer, media=media)
        call.nated = behind_nat(req, source)
        call.trunk = verdict.trunk
        call.reliable = any(r.lower() == "100rel" for r in req.headers.get_all("Require"))
        try:
            terms = negotiate_timer(req, self.config.min_se, self.config.session_expires)
        except ValueError:  # digits int() refuses (``²``) in Session-Expires
            self._bad("bad Session-Expires", 400)
            response = build_response(req, 400, None, [], to_tag=ref)
            return actions + self._tx_respond(key, response, now)
        if isinstance(terms, TooSmall) and not code:
            response = self._response(req, 422, call, [("Min-SE", str(terms.min_se))])
            return actions + self._tx_respond(key, response, now)
        call.timer_offer = terms if isinstance(terms, SessionTerms) else None
        if code:
            headers = [("Accept", "application/sdp, multipart/mixed")] if code == 415 else []
            response = self._response(req, code, call, headers)
            return actions + self._tx_respond(key, response, now)
        entry.call = ref
        self._calls[ref] = call
        self._dialogs[dialog.key] = ref
        self._origins[origin] = ref
        self._pending += 1
        call.invite_deadline = now + self.config.invite_timeout
        self.stats.calls_started += 1
        return [*actions, StartCall(ref, req, offer, source, verdict.trunk, verdict.number)]

    def _cancel(
        self, req: Request, key: Key, dest: Address, transport: str, now: float
    ) -> list[Action]:
        target = self._machines.get(cancel_target(req))
        if target is None or not isinstance(target.machine, InviteServerTransaction):
            return self._answer_tx(req, key, dest, transport, 481, now)
        # §9.2: 200 to the CANCEL whatever the INVITE's state; 487 only while pending
        actions = self._answer_tx(req, key, dest, transport, 200, now)
        call = self._calls.get(target.call) if target.call is not None else None
        if call is not None and call.phase is Phase.PENDING:
            actions += self._final(call, 487, now, "cancelled")
        return actions

    def _in_dialog(
        self, req: Request, key: Key, dest: Address, transport: str, source: Address, now: float
    ) -> list[Action]:
        ref = self._dialogs.get((req.call_id(), req.to().tag or "", req.from_().tag or ""))
        call = self._calls.get(ref) if ref is not None else None
        if call is None or call.phase is Phase.ENDED:
            return self._answer_tx(req, key, dest, transport, 481, now)
        dialog = call.dialog
        if not dialog.accept_cseq(req.cseq().seq):
            return self._answer_tx(req, key, dest, transport, 500, now)
        method = req.method
        if method == "BYE":
            actions = self._answer_tx(req, key, dest, transport, 200, now)
            if call.phase is Phase.PENDING:  # §15.1.2: the INVITE gets 487
                actions += self._tx_respond(
                    call.tx_key, self._response(call.invite, 487, call), now
                )
            if call.referral is not None and call.referral.accepted:
                # a trunk that accepted the REFER and then lets go has done the transfer
                call.referral = None
                reason = "the trunk accepted the REFER and released the call"
                actions.append(TransferResult(call.ref, True, 200, reason))
                return actions + self._end(call, "transferred")
            return actions + self._end(call, "remote_bye")
        if method in ("INFO", "NOTIFY"):
            actions = self._answer_tx(req, key, dest, transport, 200, now)
            ctype = req.headers.get("Content-Type") or ""
            if method == "INFO":
                return [*actions, InfoReceived(call.ref, ctype, req.body)]
            event = req.headers.get("Event") or ""
            if is_refer_event(event) and call.referral is not None:
                return actions + self._refer_notified(call, req, now)
            return [*actions, NotifyReceived(call.ref, event, ctype, req.body)]
        if method == "OPTIONS":
            return self._answer_tx(req, key, dest, transport, 200, now, self._capabilities())
        if method == "PRACK":
            return self._prack(call, req, key, dest, transport, now)
        if method in ("INVITE", "UPDATE"):
            return self._reoffer(call, req, key, dest, transport, source, now)
        return self._answer_tx(req, key, dest, transport, 405, now)

    def _reoffer(
        self,
        call: Call,
        req: Request,
        key: Key,
        dest: Address,
        transport: str,
        source: Address,
        now: float,
    ) -> list[Action]:
        """re-INVITE / UPDATE: answer the NEW offer, or make ours when there is none.
        A target refresh also moves the flow: a caller whose NAT binding changed is
        reached where its refresh came from (Kamailio fixes its Contact on each one)."""
        reliable = transport != "UDP"
        if req.method == "INVITE":
            machine: _Machine = InviteServerTransaction(req, reliable, self.config.timers)
        else:
            machine = NonInviteServerTransaction(req, reliable, self.config.timers)
        self._machines[key] = _Entry(
            machine, dest, transport, call.ref, "invite" if req.method == "INVITE" else "server"
        )
        # RFC 3311 §5.1: an UPDATE may offer in an early dialog once its first offer and
        # answer are done (our 183's SDP, its PRACK received)
        early = req.method == "UPDATE" and call.phase is Phase.PENDING and _early_answered(call)
        if not early and (
            call.phase is not Phase.CONFIRMED
            or call.local is None
            or (req.method == "INVITE" and call.retransmitter is not None)
        ):
            return self._tx_respond(key, self._response(req, 491, call), now)
        if (req.method == "INVITE" or req.body) and self._offer_pending(call):
            # glare with our own re-INVITE (a refresh): 491, the peer retries (§14.2)
            return self._tx_respond(key, self._response(req, 491, call), now)
        try:
            terms = None if early else negotiate_timer(req, self.config.min_se, None)
            _check_contact(req)
        except ValueError:  # a bad Contact, or digits int() refuses in Session-Expires
            self._bad("bad Contact or Session-Expires", 400, call.ref)
            return self._tx_respond(key, self._response(req, 400, call), now)
        if isinstance(terms, TooSmall):
            extra = [("Min-SE", str(terms.min_se))]
            return self._tx_respond(key, self._response(req, 422, call, extra), now)
        if not early:
            self._start_timer(call, terms, now)
        timer_headers = terms.headers() if terms else []
        call.dialog.refresh_target(req)  # its Contact was checked above
        if transport == call.transport:
            call.source, call.nated = source, behind_nat(req, source)
            self._arm_keepalive(call, now)
        updates: list[Action] = []
        if req.body:
            sdp = sdp_body(req.headers.get("Content-Type") or "", req.body)
            if sdp is None:
                self._bad("a body that is not SDP", 415, call.ref)
                extra = [("Accept", "application/sdp, multipart/mixed")]
                return self._tx_respond(key, self._response(req, 415, call, extra), now)
            try:
                offer = parse_sdp(sdp)
                media = negotiate(offer, self.config.media)
            except NoCommonCodec:
                return self._tx_respond(key, self._response(req, 488, call), now)
            except ValueError as exc:  # SdpError, or a number int() refuses
                reason = f"bad SDP: {_sdp_reason(exc)}"
                self._bad(reason, 400, call.ref)
                return self._tx_respond(key, self._response(req, 400, call), now)
            assert call.local is not None
            body = call.local.answer(offer, media)
            if media != call.media:
                call.media = media
                updates.append(MediaUpdated(call.ref, media))
        elif req.method == "UPDATE":
            return self._tx_respond(key, self._response(req, 200, call, timer_headers), now)
        else:
            assert call.local is not None
            direction = call.media.direction if call.media is not None else "sendrecv"
            body = call.local.offer("sendrecv" if direction == "recvonly" else direction)
            if req.method == "INVITE":
                call.awaiting_answer_in_ack = True
        if req.method == "UPDATE":
            headers = timer_headers + self._sdp_headers()
            response = self._response(req, 200, call, headers, body)
            return self._tx_respond(key, response, now) + updates
        return self._send_2xx(call, req, key, body, now, terms) + updates

    def _offer_pending(self, call: Call) -> bool:
        """Our own re-INVITE (it carries an offer) has no final response yet."""
        refresh = call.session.refresh if call.session is not None else None
        entry = self._machines.get(refresh) if refresh is not None else None
        return entry is not None and isinstance(entry.machine, InviteClientTransaction)

    def _ack_2xx(self, req: Request, now: float) -> list[Action]:
        ref = self._dialogs.get((req.call_id(), req.to().tag or "", req.from_().tag or ""))
        call = self._calls.get(ref) if ref is not None else None
        if call is None or call.retransmitter is None:
            return []  # a stray or late ACK: absorbed
        entry = self._machines.get(call.retransmitter)
        retx = entry.machine if entry is not None else None
        if not isinstance(retx, Uas2xxRetransmitter) or req.cseq().seq != retx.cseq:
            return []
        self._machines.pop(call.retransmitter, None)
        call.retransmitter = None
        retx.receive_ack(now)
        if call.hangup_reported:  # the edge hung up while the 2xx awaited this ACK
            return self._bye(call, now, "local_bye")
        actions: list[Action] = []
        if call.awaiting_answer_in_ack:
            call.awaiting_answer_in_ack = False
            try:
                call.media = accept_answer(parse_sdp(req.body), self.config.media)
            except ValueError as exc:  # SdpError, or a number int() refuses
                reason = f"bad SDP answer in the ACK: {_sdp_reason(exc)}"
                self._bad(reason, None, call.ref)
                return self._bye(call, now, "bad_answer")
            if call.phase is Phase.CONFIRMED:
                actions.append(MediaUpdated(call.ref, call.media))
        if call.phase is Phase.ANSWERED:
            call.phase = Phase.CONFIRMED
            call.dialog.state = DialogState.CONFIRMED
            self._arm_keepalive(call, now)
            actions.append(CallConfirmed(call.ref, call.media))
        return actions

    def _on_response(self, response: Response, now: float) -> list[Action]:
        via = response.top_via()
        key = client_key(via.branch or "", response.cseq().method)
        entry = self._machines.get(key)
        machine = entry.machine if entry is not None else None
        if entry is None or not isinstance(
            machine, (NonInviteClientTransaction, InviteClientTransaction)
        ):
            self.stats.dropped += 1
            return []  # a response to nothing of ours (or a stray 2xx retransmission)
        return self._outputs(key, entry, machine.receive_response(response, now), now)

    # -- sending -------------------------------------------------------------------------

    def _capabilities(self) -> list[tuple[str, str]]:
        return [
            ("Allow", ", ".join(self.config.allow)),
            ("Accept", "application/sdp, application/dtmf-relay, application/dtmf"),
            ("Supported", ", ".join(self.config.supported)),
        ]

    def _sdp_headers(self) -> list[tuple[str, str]]:
        return [("Content-Type", "application/sdp")]

    def _response(
        self,
        req: Request,
        code: int,
        call: Call | None,
        extra: list[tuple[str, str]] | None = None,
        body: bytes = b"",
    ) -> Response:
        headers = list(extra or [])
        if call is not None and 100 < code < 300 and req.method in ("INVITE", "UPDATE"):
            headers.insert(0, ("Contact", call.dialog.local_contact))
            if code < 300 and code >= 200:
                headers += self._capabilities()
        headers.append(("Server", self.config.user_agent))
        tag = call.ref if call is not None else self._new_id()
        return build_response(req, code, None, headers, body, to_tag=tag)

    def _tx_respond(self, key: Key, response: Response, now: float) -> list[Action]:
        entry = self._machines.get(key)
        if entry is None:
            return []
        machine = entry.machine
        assert isinstance(machine, (InviteServerTransaction, NonInviteServerTransaction))
        return self._outputs(key, entry, machine.respond(response, now), now)

    def _answer_tx(
        self,
        req: Request,
        key: Key,
        dest: Address,
        transport: str,
        code: int,
        now: float,
        extra: list[tuple[str, str]] | None = None,
    ) -> list[Action]:
        """Answer a request at once through a new non-INVITE server transaction (so
        that a resent request gets the same answer until Timer J)."""
        machine = NonInviteServerTransaction(req, transport != "UDP", self.config.timers)
        entry = _Entry(machine, dest, transport, None, "server")
        self._machines[key] = entry
        headers = list(extra or [])
        headers.append(("Server", self.config.user_agent))
        response = build_response(req, code, None, headers, to_tag=self._new_id())
        return self._outputs(key, entry, machine.respond(response, now), now)

    def _send_2xx(
        self,
        call: Call,
        req: Request,
        key: Key,
        body: bytes,
        now: float,
        terms: SessionTerms | None = None,
    ) -> list[Action]:
        headers = (terms.headers() if terms else []) + self._sdp_headers()
        response = self._response(req, 200, call, headers, body)
        actions = self._tx_respond(key, response, now)
        retx = Uas2xxRetransmitter(response, self.config.timers)
        retx_key: Key = ("2xx", call.ref, str(retx.cseq))
        entry = _Entry(retx, self._machines[key].dest, call.transport, call.ref, "2xx")
        retx.start(now)  # its first send is the transaction's
        self._machines[retx_key] = entry
        call.retransmitter = retx_key
        if call.phase is Phase.PENDING:
            self._pending -= 1
            call.invite_deadline = None
            call.phase = Phase.ANSWERED
        return actions

    def _final(self, call: Call, code: int, now: float, reason: str) -> list[Action]:
        """A non-2xx final answer to the call's INVITE, and the call's end."""
        actions = self._tx_respond(call.tx_key, self._response(call.invite, code, call), now)
        return actions + self._end(call, reason, code)

    def _bye(self, call: Call, now: float, reason: str) -> list[Action]:
        actions = self._client(call, "BYE", now)
        return actions + self._end(call, reason)

    def _client(
        self,
        call: Call,
        method: str,
        now: float,
        headers: list[tuple[str, str]] | None = None,
        body: bytes = b"",
    ) -> list[Action]:
        return self._start_client(call, method, now, headers, body)[1]

    def _start_client(
        self,
        call: Call,
        method: str,
        now: float,
        headers: list[tuple[str, str]] | None = None,
        body: bytes = b"",
    ) -> tuple[Key, list[Action]]:
        """A request inside the call's dialog, in a client transaction of its own."""
        branch = self._new_id()
        req = call.dialog.build_request(
            method,
            branch,
            self.config.sent_by,
            [*(headers or []), ("User-Agent", self.config.user_agent)],
            body,
        )
        machine = NonInviteClientTransaction(req, call.transport != "UDP", self.config.timers)
        key = client_key(req.top_via().branch or "", method)
        dest, uri = self._dialog_dest(call)
        entry = _Entry(machine, dest, call.transport, call.ref, "client", uri=uri, flow=call.source)
        self._machines[key] = entry
        return key, self._outputs(key, entry, machine.start(now), now)

    # -- transfer -----------------------------------------------------------------------

    def _refer_answered(self, call: Call, response: Response, now: float) -> list[Action]:
        referral = call.referral
        assert referral is not None
        if response.status < 200:
            return []
        if response.status >= 300:
            return self._refer_refused(call, response.status, response.reason, now)
        referral.accepted = True
        referral.deadline = now + self.config.refer_timeout
        return []

    def _refer_refused(self, call: Call, status: int, why: str, now: float) -> list[Action]:
        call.referral = None
        actions: list[Action] = [
            TransferResult(call.ref, False, status, f"REFER refused: {status} {why}")
        ]
        if self.config.refer_refused_bye:
            actions += self._bye(call, now, "refer_refused")
        return actions

    def _refer_notified(self, call: Call, req: Request, now: float) -> list[Action]:
        """A NOTIFY of the REFER's subscription: the sipfrag says how the target answered."""
        status = sipfrag_status(req.body)
        state = (req.headers.get("Subscription-State") or "").split(";")[0].strip().lower()
        if status is None or status < 200:
            if state != "terminated":
                return []  # 100 Trying, 180 Ringing …
            status = 487
        call.referral = None
        if status >= 300:
            reason = f"the transfer target answered {status}"
            return [TransferResult(call.ref, False, status, reason)]
        done = TransferResult(call.ref, True, status, "the transfer target answered")
        return [done, *self._bye(call, now, "transferred")]

    # -- provisional responses -------------------------------------------------------

    def _local_session(self, rtp_port: int) -> LocalSession:
        return LocalSession(self.config.media, rtp_port, str(next(self._seq) + 1_000_000))

    def _provisional(self, call: Call, code: int, body: bytes, now: float) -> list[Action]:
        """180 or 183 (with ``body``), reliable when the INVITE required 100rel."""
        headers = self._sdp_headers() if body else []
        if not call.reliable:
            response = self._response(call.invite, code, call, headers, body)
            return self._tx_respond(call.tx_key, response, now)
        call.rseq = call.rseq + 1 if call.rseq else secrets.randbelow(2**31 - 1) + 1
        headers = [("Require", "100rel"), ("RSeq", str(call.rseq)), *headers]
        response = self._response(call.invite, code, call, headers, body)
        actions = self._tx_respond(call.tx_key, response, now)
        retx = Uas2xxRetransmitter(response, self.config.timers)  # T1 doubling, as a 2xx
        retx.start(now)  # its first send is the transaction's
        key: Key = ("1xx", call.ref, str(call.rseq))
        self._machines[key] = _Entry(
            retx, self._machines[call.tx_key].dest, call.transport, call.ref, "1xx"
        )
        call.provisional = key
        return actions

    def _prack(
        self, call: Call, req: Request, key: Key, dest: Address, transport: str, now: float
    ) -> list[Action]:
        """RFC 3262 §3: a PRACK whose RAck names our unacknowledged provisional: 200."""
        rack = (req.headers.get("RAck") or "").split()
        expected = [str(call.rseq), str(call.invite.cseq().seq), "INVITE"]
        if call.provisional is None or [p.upper() for p in rack] != expected:
            return self._answer_tx(req, key, dest, transport, 481, now)
        self._machines.pop(call.provisional, None)
        call.provisional = None
        actions = self._answer_tx(req, key, dest, transport, 200, now)
        if call.answer_waits and call.local is not None:
            call.answer_waits = False
            actions += self.answer(call.ref, call.local.port, now)
        return actions

    # -- session timer ------------------------------------------------------------------

    def _start_timer(self, call: Call, terms: SessionTerms | None, now: float) -> None:
        """(Re)start the call's session timer as our 2xx just said."""
        if terms is None:
            call.session = None  # a request without Session-Expires turns it off (§9)
            return
        allows = {m.strip().upper() for m in call.invite.headers.get_all("Allow")}
        we_refresh = terms.refresher == "uas"
        session = SessionTimer(terms.interval, we_refresh, use_update="UPDATE" in allows)
        session.restart(now)
        call.session = session

    def _send_refresh(self, call: Call, session: SessionTimer, now: float) -> list[Action]:
        """Our refresh (§7.4): UPDATE without an offer, or a re-INVITE offering the same SDP."""
        headers = [
            ("Session-Expires", f"{int(session.interval)};refresher=uac"),
            ("Supported", "timer"),
        ]
        if session.use_update or call.local is None:
            key, actions = self._start_client(call, "UPDATE", now, headers)
            session.refresh = key
            return actions
        dialog = call.dialog
        invite = dialog.build_request(
            "INVITE",
            self._new_id(),
            self.config.sent_by,
            [*headers, *self._sdp_headers(), ("User-Agent", self.config.user_agent)],
            call.local.again(),
        )
        ack = dialog.build_request(
            "ACK", self._new_id(), self.config.sent_by, [], cseq=invite.cseq().seq
        )
        dest, uri = self._dialog_dest(call)
        machine = InviteClientTransaction(invite, call.transport != "UDP", self.config.timers)
        key = client_key(invite.top_via().branch or "", "INVITE")
        entry = _Entry(
            machine, dest, call.transport, call.ref, "client", ack.to_bytes(), uri, call.source
        )
        self._machines[key] = entry
        session.refresh = key
        # a re-INVITE answered with 100 only would wait for ever (Timer B stops at a
        # provisional): past 64*T1 without a final answer, the refresh has failed (§10)
        session.deadline = now + 64 * self.config.timers.t1
        return self._outputs(key, entry, machine.start(now), now)

    def _refresh_answered(
        self, call: Call, session: SessionTimer, response: Response, now: float
    ) -> list[Action]:
        status = response.status
        if status < 200:
            return []
        session.refresh = None
        if status < 300:
            try:
                agreed = session_expires(response)
            except ValueError:  # digits int() refuses: as if absent
                agreed = None
            if agreed is not None:  # "uac" is us, the refresh's client (§7.4)
                session.interval = float(agreed[0])
                session.we_refresh = agreed[1] != "uas"
            session.restart(now)
            return []
        if status == 491:  # glare with the peer's own request: again shortly (§14.1)
            session.deadline = now + 2.0
            return []
        if status in (405, 501) and session.use_update:
            session.use_update = False  # it does not take UPDATE after all: re-INVITE
            session.deadline = now
            return []
        floor = (response.headers.get("Min-SE") or "").split(";")[0].strip()
        if status == 422 and is_digits(floor):
            session.interval = max(session.interval, float(floor))
            session.deadline = now
            return []
        return self._bye(call, now, "session_expired")

    def _arm_keepalive(self, call: Call, now: float) -> None:
        """A caller behind NAT over UDP gets a CRLF ping every ``nat_keepalive`` seconds
        while the call is up (as pjsip's and Kamailio's nathelper's), so the binding our
        BYE needs is still open at the end of a long call."""
        every = self.config.nat_keepalive
        up = call.phase is Phase.CONFIRMED and not call.hangup_reported
        if every and up and call.nated and call.transport == "UDP":
            call.keepalive_at = now + every
        else:
            call.keepalive_at = None

    def _dialog_dest(self, call: Call) -> tuple[Address, str | None]:
        """Where our in-dialog requests go (:func:`~telephony_edge.sip.nat.in_dialog_dest`),
        and the URI for the shell to resolve when that is a host name."""
        if call.unreachable:
            return call.source, None
        dest = in_dialog_dest(call.dialog, call.source, call.transport, call.nated)
        return dest, None if ip_literal(dest[0]) else call.dialog.next_hop()

    def _end(self, call: Call, reason: str, status: int | None = None) -> list[Action]:
        if call.phase is Phase.ENDED:
            return []
        if call.phase is Phase.PENDING:
            self._pending -= 1
        call.phase = Phase.ENDED
        call.invite_deadline = call.keepalive_at = None
        call.dialog.state = DialogState.TERMINATED
        if call.provisional is not None:
            self._machines.pop(call.provisional, None)
            call.provisional = None
        if call.retransmitter is not None:
            self._machines.pop(call.retransmitter, None)
            call.retransmitter = None
        self._calls.pop(call.ref, None)
        self._dialogs.pop(call.dialog.key, None)
        origin = (call.dialog.call_id, call.dialog.remote_tag, call.invite.cseq().seq)
        self._origins.pop(origin, None)
        return [] if call.hangup_reported else [CallEnded(call.ref, reason, status)]

    def _outputs(self, key: Key, entry: _Entry, outputs: list[Output], now: float) -> list[Action]:
        actions: list[Action] = []
        for out in outputs:
            if isinstance(out, Transmit):
                actions.append(Send(out.data, entry.dest, entry.transport, entry.call, entry.uri))
            elif isinstance(out, TimedOut):
                call = self._calls.get(entry.call) if entry.call is not None else None
                if call is None:
                    continue
                if entry.kind == "2xx":
                    call.retransmitter = None
                    actions += self._bye(call, now, "no_ack")
                elif entry.kind == "1xx":  # RFC 3262 §3: no PRACK, the INVITE fails
                    call.provisional = None
                    actions += self._final(call, 504, now, "no_prack")
                elif call.referral is not None and call.referral.key == key:
                    actions += self._refer_refused(call, 408, "no answer", now)
                elif call.session is not None and call.session.refresh == key:
                    actions += self._bye(call, now, "session_expired")
            elif isinstance(out, PassUp):
                # responses to our BYE/INFO: nothing to do; to our REFER: the transfer;
                # to our refresh: the session timer (and the ACK of a re-INVITE's 2xx)
                call = self._calls.get(entry.call) if entry.call is not None else None
                if call is None:
                    continue
                if entry.ack is not None and 200 <= out.response.status < 300:
                    ack = Send(entry.ack, entry.dest, entry.transport, entry.call, entry.uri)
                    actions.append(ack)
                if call.referral is not None and call.referral.key == key:
                    actions += self._refer_answered(call, out.response, now)
                elif call.session is not None and call.session.refresh == key:
                    actions += self._refresh_answered(call, call.session, out.response, now)
            elif isinstance(out, Terminated):
                self._machines.pop(key, None)
        self._machines.touch(key)
        return actions


def _early_answered(call: Call) -> bool:
    """The early dialog's offer and answer are done: our reliable 183's SDP was PRACKed."""
    return call.local is not None and call.rseq > 0 and call.provisional is None


_QUOTED = re.compile(r"""\s+(?:in\s+)?['"].*$""", re.S)


def _unquoted(reason: str) -> str:
    """A parse error's reason up to where it quotes the message: the sender's bytes stay
    out of the log (``bad Via 'x'`` → ``bad Via``)."""
    return _QUOTED.sub("", reason)[:100]


def _sdp_reason(exc: ValueError) -> str:
    """What was wrong with an SDP body, without quoting it."""
    return _unquoted(str(exc)) if isinstance(exc, SdpError) else "a number int() refuses"


def _check_contact(req: Request) -> None:
    """Raise ValueError unless the request's Contact, if any, can be the dialog's target."""
    contacts = req.headers.get_all("Contact")
    if contacts:
        NameAddr.parse(contacts[0]).sip_uri()


def _quote(text: str) -> str:
    return text.replace("\\", "").replace('"', "'")[:100]
