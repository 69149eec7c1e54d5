"""The edge's outbound INVITE, the UAC side (RFC 3261 §13.2, §9.1, §22; RFC 3263 §4.3), sans-I/O.

Theory of operation
-------------------
One :class:`OutboundInvite` per call the edge places. Its shell (the UA,
:mod:`telephony_edge.sip.ua_dial`) feeds it the current time with every event:

* :meth:`~OutboundInvite.start`: the call begins;
* :meth:`~OutboundInvite.resolved` / :meth:`~OutboundInvite.unresolvable`:
  the answer to its :class:`Lookup` of a hop (RFC 3263: every address of
  the hop, in the order to try them);
* :meth:`~OutboundInvite.receive`: a response whose Call-ID is the call's;
* :meth:`~OutboundInvite.tick`: the time, at or after
  :meth:`~OutboundInvite.next_deadline`;
* :meth:`~OutboundInvite.cancel`: the API or the agent hung up first.

and it answers with outputs: :class:`~telephony_edge.sip.client_outputs.Lookup`
(a hop's URI for the shell to resolve),
:class:`~telephony_edge.sip.client_outputs.SendRequest` (bytes to an address),
:class:`Progress` (180, 183: reported, the early media itself goes to
nobody), :class:`Answered` (the 2xx, ACKed, with its dialog for the UA to
keep) or :class:`Failed`
(``busy``, ``no-answer``, ``failed`` or ``canceled``, the words of
Twilio's status callbacks). No socket, no task, no clock inside.

The hops are the trunk's proxies in order (or the ``sip:`` URI dialled).
Each INVITE is its own client transaction
(:class:`~telephony_edge.sip.transaction.InviteClientTransaction`, which
resends it, ACKs a non-2xx final and absorbs retransmissions); the machine
decides what comes next:

* 401/407: the same request again, a new CSeq, with the digest of the
  trunk's credentials (:mod:`telephony_edge.sip.digest_client`), to the
  same address;
* 503, no response within ``failover_timeout`` (or Timer B), a hop that
  does not resolve: the next address of the hop, then the next hop
  (RFC 3263 §4.3); the last failure decides how the call failed;
* any other final: the call failed (486/600/603 ``busy``; 408/480/487
  ``no-answer``; the rest ``failed``);
* a 2xx: the ACK (§13.2.2.4, resent for every retransmitted 2xx until
  Timer M) and :class:`Answered`;
* a connection to the address that cannot be opened (TCP, TLS: refused,
  timed out, a server certificate the edge does not trust or that is not for
  the hop's name), which the shell reports with
  :meth:`~OutboundInvite.connect_failed`: a 503 (RFC 3261 §8.1.3.1), so the
  next address;
* ``ring_timeout`` or :meth:`cancel`: CANCEL (§9.1: not before a
  provisional response; until then it waits), then the 487 ends the call.
  A 2xx that crosses the CANCEL is answered all the same: ACKed and given
  to the UA, which hangs up if the API wanted the call gone.

Transitions are :data:`TABLE`: ``(phase, event) → (phase, ops)``; a pair
not in it is ignored (a provisional after the answer, a second CANCEL). The
ops are data that :meth:`OutboundInvite._run` gives a meaning; code is only
for what a table cannot say (which address is next, what a status means).

Over TLS (a hop ``sips:`` or ``;transport=tls``, or the plan's transport)
each :class:`~telephony_edge.sip.client_outputs.SendRequest` names the server
its certificate must be for: the hop's host (RFC 5922 §4: the domain of the
URI, never an SRV target). The offer carries SRTP as the plan's
:class:`~telephony_edge.sip.sdes.SrtpRules` allow
(the dial plan allows it when its hops are TLS): ``RTP/SAVP`` with
``a=crypto`` when required, ``RTP/AVP`` with ``a=crypto`` when optional
(best effort, as baresip and pjsip offer it). The answer's ``a=crypto`` for
our tag and suite keys the call's SRTP; an answer without one when SRTP is
required is a problem (the UA hangs up).

Rules: nothing raises out of the public methods for what a peer sends (a
response without the call's branch is ignored); an abandoned attempt's
transaction is dropped at once, so a host that answers after the failover
gets no ACK and ends its own dialog (§13.3.1.4).
"""

from __future__ import annotations

import enum
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

from telephony_edge.sip import sdes
from telephony_edge.sip.body import sdp_body
from telephony_edge.sip.client_outputs import Lookup, SendRequest
from telephony_edge.sip.dialog import Address, Dialog
from telephony_edge.sip.digest_client import MAX_CHALLENGES, DigestClient
from telephony_edge.sip.family import Family
from telephony_edge.sip.headers import Headers
from telephony_edge.sip.message import MAGIC_COOKIE, Request, Response
from telephony_edge.sip.nat import ip_literal
from telephony_edge.sip.sdes import DEFAULT_RULES, SrtpRules
from telephony_edge.sip.sdp import LocalSession, MediaConfig, Negotiated, accept_answer, parse_sdp
from telephony_edge.sip.transaction import (
    DEFAULT_TIMERS,
    InviteClientTransaction,
    NonInviteClientTransaction,
    Output,
    PassUp,
    State,
    Terminated,
    TimedOut,
    Timers,
    Transmit,
)
from telephony_edge.sip.uri import SipUri

BUSY = frozenset({486, 600, 603})
NO_ANSWER = frozenset({408, 480, 487})
UNAVAILABLE = frozenset({503})  # RFC 3263 §4.3: try the next address


@dataclass(frozen=True, slots=True)
class Dial:
    """Where one outbound call goes and how it presents itself (the dial plan's answer)."""

    request_uri: str
    from_uri: str  # sip:+15550100@edge.example
    hops: tuple[str, ...]  # URIs tried in order (outbound proxies, or the request URI)
    to_uri: str = ""  # default: the request URI
    transport: str = "UDP"  # for hops whose URI says no transport
    ring_timeout: float = 60.0
    failover_timeout: float = 5.0  # no response at all from an address: the next one
    headers: tuple[tuple[str, str], ...] = ()
    srtp: SrtpRules = DEFAULT_RULES  # what the offer may carry (the dial plan's)
    family: Family = 4  # of our address in it and of its media (the dial plan's choice)


@dataclass(frozen=True, slots=True)
class UacConfig:
    sent_by: str  # host:port in Via
    contact: str  # our Contact header value
    user_agent: str = "telephony-edge"
    allow: tuple[str, ...] = ("INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "INFO", "UPDATE")
    timers: Timers = DEFAULT_TIMERS


# -- outputs ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Progress:
    """A provisional response past 100 (180 Ringing, 183 Session Progress …)."""

    status: int
    reason: str
    early_media: bool  # it carried SDP


@dataclass(frozen=True, slots=True)
class Answered:
    """The 2xx, ACKed: the dialog is the UA's now. ``problem``: the answer cannot be used
    (no SDP answer, or none the edge can play) and the UA hangs up; ``cancelled``: the 2xx
    crossed the API's CANCEL, and the UA hangs up too."""

    dialog: Dialog
    invite: Request
    response: Response
    media: Negotiated | None
    flow: Address  # where the INVITE went
    transport: str
    problem: str | None = None
    cancelled: bool = False


@dataclass(frozen=True, slots=True)
class Failed:
    """The call was not answered: ``outcome`` is busy, no-answer, failed or canceled."""

    outcome: str
    status: int
    reason: str


UacOutput = Lookup | SendRequest | Progress | Answered | Failed


class Phase(enum.Enum):
    IDLE = "idle"
    RESOLVING = "resolving"  # the current hop is being looked up
    CALLING = "calling"  # INVITE sent, nothing back yet
    PROCEEDING = "proceeding"  # a provisional response came
    CANCELLING = "cancelling"  # CANCEL sent, or waiting for a provisional to send it
    ANSWERED = "answered"
    FAILED = "failed"


class Ev(enum.Enum):
    START = "start"
    RESOLVED = "resolved"
    UNRESOLVABLE = "unresolvable"
    PROVISIONAL = "provisional"
    ANSWER = "answer"  # 2xx
    CHALLENGE = "challenge"  # 401 / 407
    UNAVAILABLE = "unavailable"  # 503, no response in time, Timer B
    REFUSED = "refused"  # any other final
    RING_TIMEOUT = "ring_timeout"
    CANCEL = "cancel"
    GIVE_UP = "give_up"  # no final response 64*T1 after the CANCEL


class Op(enum.Enum):
    ARM_RING = "arm_ring"
    LOOKUP = "lookup"  # the next hop, or fail when there is none
    TRY_NEXT = "try_next"  # INVITE to the hop's next address, else look up the next hop, else fail
    NOTE = "note"  # the event's status is the last failure
    ABANDON = "abandon"  # no more resends of the current INVITE (see _abandon)
    STOP_FAILOVER = "stop_failover"
    REPORT = "report"
    AUTHENTICATE = "authenticate"  # the INVITE again with credentials, or fail
    CANCEL = "cancel"  # send CANCEL once
    ACK = "ack"
    ANSWER = "answer"
    FAIL = "fail"


P, E = Phase, Ev
_FINAL_IN_CANCEL = (E.CHALLENGE, E.UNAVAILABLE, E.REFUSED)

#: (phase, event) → (next phase, ops); see the module docstring
TABLE: dict[tuple[Phase, Ev], tuple[Phase, tuple[Op, ...]]] = {
    (P.IDLE, E.START): (P.RESOLVING, (Op.ARM_RING, Op.LOOKUP)),
    (P.RESOLVING, E.RESOLVED): (P.CALLING, (Op.TRY_NEXT,)),
    (P.RESOLVING, E.UNRESOLVABLE): (P.RESOLVING, (Op.NOTE, Op.LOOKUP)),
    (P.RESOLVING, E.CANCEL): (P.FAILED, (Op.FAIL,)),
    (P.RESOLVING, E.RING_TIMEOUT): (P.FAILED, (Op.FAIL,)),
    (P.CALLING, E.PROVISIONAL): (P.PROCEEDING, (Op.STOP_FAILOVER, Op.REPORT)),
    (P.CALLING, E.ANSWER): (P.ANSWERED, (Op.STOP_FAILOVER, Op.ACK, Op.ANSWER)),
    (P.CALLING, E.CHALLENGE): (P.CALLING, (Op.STOP_FAILOVER, Op.AUTHENTICATE)),
    (P.CALLING, E.UNAVAILABLE): (P.CALLING, (Op.ABANDON, Op.NOTE, Op.TRY_NEXT)),
    (P.CALLING, E.REFUSED): (P.FAILED, (Op.STOP_FAILOVER, Op.NOTE, Op.FAIL)),
    (P.CALLING, E.CANCEL): (P.CANCELLING, ()),  # §9.1: the CANCEL waits for a provisional
    (P.CALLING, E.RING_TIMEOUT): (P.FAILED, (Op.ABANDON, Op.FAIL)),
    (P.PROCEEDING, E.PROVISIONAL): (P.PROCEEDING, (Op.REPORT,)),
    (P.PROCEEDING, E.ANSWER): (P.ANSWERED, (Op.ACK, Op.ANSWER)),
    (P.PROCEEDING, E.CHALLENGE): (P.CALLING, (Op.AUTHENTICATE,)),
    (P.PROCEEDING, E.UNAVAILABLE): (P.CALLING, (Op.ABANDON, Op.NOTE, Op.TRY_NEXT)),
    (P.PROCEEDING, E.REFUSED): (P.FAILED, (Op.NOTE, Op.FAIL)),
    (P.PROCEEDING, E.CANCEL): (P.CANCELLING, (Op.CANCEL,)),
    (P.PROCEEDING, E.RING_TIMEOUT): (P.CANCELLING, (Op.CANCEL,)),
    (P.CANCELLING, E.PROVISIONAL): (P.CANCELLING, (Op.STOP_FAILOVER, Op.CANCEL)),
    (P.CANCELLING, E.ANSWER): (P.ANSWERED, (Op.STOP_FAILOVER, Op.ACK, Op.ANSWER)),
    **{(P.CANCELLING, ev): (P.FAILED, (Op.ABANDON, Op.NOTE, Op.FAIL)) for ev in _FINAL_IN_CANCEL},
    (P.CANCELLING, E.RING_TIMEOUT): (P.FAILED, (Op.ABANDON, Op.FAIL)),
    (P.CANCELLING, E.GIVE_UP): (P.FAILED, (Op.ABANDON, Op.FAIL)),
    (P.ANSWERED, E.ANSWER): (P.ANSWERED, (Op.ACK,)),  # a retransmitted 2xx: the ACK again
}


@dataclass(slots=True)
class _Attempt:
    """One INVITE (or CANCEL) transaction and where it goes."""

    machine: InviteClientTransaction | NonInviteClientTransaction
    dest: Address
    transport: str
    server_name: str | None


@dataclass(slots=True)
class _Hop:
    uri: str
    transport: str
    addresses: list[Address] = field(default_factory=list)
    next: int = 0

    @property
    def server_name(self) -> str | None:
        """Over TLS, the name the server's certificate must carry: the URI's host."""
        return SipUri.parse(self.uri).host.strip("[]") if self.transport == "TLS" else None


class OutboundInvite:
    """See the module docstring."""

    def __init__(
        self,
        dial: Dial,
        config: UacConfig,
        local: LocalSession,
        media: MediaConfig,
        digest: DigestClient | None = None,
        new_id: Callable[[], str] | None = None,
    ) -> None:
        self.dial = dial
        self.config = config
        self.local = local
        self.media = media
        self.digest = digest
        self._new_id = new_id or (lambda: secrets.token_hex(8))
        self.call_id = self._new_id()
        self.tag = self._new_id()
        self.phase = Phase.IDLE
        self._hops = [_Hop(uri, hop_transport(uri, dial.transport)) for uri in dial.hops]
        self._hop = -1
        self._cseq = 0
        crypto = sdes.offer(None) if dial.srtp.srtp_allowed else None
        self._offer = local.offer(crypto=crypto, secure=dial.srtp.policy == "required")
        self._txs: dict[tuple[str, str], _Attempt] = {}  # (branch, method) → attempt
        self._invite: Request | None = None  # the current attempt's INVITE
        self._branch = ""
        self._flow: Address = ("", 0)
        self._ring_at: float | None = None
        self._failover_at: float | None = None
        self._give_up_at: float | None = None
        self._cancel_sent = False
        self._why: str | None = None  # canceled | no-answer, once decided
        self._rang = False  # a provisional came: a ring timeout is no-answer, not failed
        self._challenges = 0
        self._last = (408, "no response")
        self._answered_last = False  # the last failure was a response, not our own timeout
        self._early: bytes | None = None  # the SDP of a 183
        self._ack: SendRequest | None = None
        self._dialog: Dialog | None = None  # formed by the 2xx
        self.bad: str | None = None  # what the peer sent wrong, for the shell's bad input

    # -- inspection -------------------------------------------------------------------

    @property
    def done(self) -> bool:
        """Over, with nothing left to resend or absorb: the UA may forget it."""
        return self.phase in (Phase.ANSWERED, Phase.FAILED) and not self._txs

    def owns(self, response: Response) -> bool:
        """Whether ``response`` answers the call's INVITE or CANCEL still open (a response
        in the call's dialog, to its BYE, is not the dial's)."""
        return (response.top_via().branch or "", response.cseq().method.upper()) in self._txs

    def next_deadline(self) -> float | None:
        times = [self._ring_at, self._failover_at, self._give_up_at]
        times += [a.machine.next_deadline() for a in self._txs.values()]
        return min((t for t in times if t is not None), default=None)

    # -- events -----------------------------------------------------------------------

    def start(self, now: float) -> list[UacOutput]:
        return self._event(Ev.START, now)

    def resolved(self, uri: str, addresses: list[Address], now: float) -> list[UacOutput]:
        """The addresses of hop ``uri``, in RFC 3263's order (empty: it did not resolve)."""
        if self.phase is not Phase.RESOLVING or self._hops[self._hop].uri != uri:
            return []  # an answer nobody waits for any more
        if not addresses:
            return self.unresolvable(uri, "no address", now)
        self._hops[self._hop].addresses = list(addresses)
        return self._event(Ev.RESOLVED, now)

    def unresolvable(self, uri: str, reason: str, now: float) -> list[UacOutput]:
        if self.phase is not Phase.RESOLVING or self._hops[self._hop].uri != uri:
            return []
        return self._event(Ev.UNRESOLVABLE, now, None, (503, f"{uri} does not resolve: {reason}"))

    def connect_failed(self, dest: Address, reason: str, now: float) -> list[UacOutput]:
        """The shell could not open the connection to ``dest`` that the INVITE needs (TCP,
        TLS): a 503 (RFC 3261 §8.1.3.1), so the next address; nothing if it is too late."""
        if dest != self._flow or (self._branch, "INVITE") not in self._txs:
            return []
        return self._event(Ev.UNAVAILABLE, now, None, (503, reason))

    def cancel(self, now: float) -> list[UacOutput]:
        """The call is not wanted any more (API hang-up): CANCEL, or nothing if too late."""
        if self._why is None and self.phase not in (Phase.ANSWERED, Phase.FAILED):
            self._why = "canceled"
        return self._event(Ev.CANCEL, now)

    def receive(self, response: Response, now: float) -> list[UacOutput]:
        """A response with the call's Call-ID."""
        key = (response.top_via().branch or "", response.cseq().method.upper())
        attempt = self._txs.get(key)
        if attempt is None:
            return []  # an abandoned attempt's, or not ours
        return self._outputs(key, attempt, attempt.machine.receive_response(response, now), now)

    def tick(self, now: float) -> list[UacOutput]:
        out: list[UacOutput] = []
        for key, attempt in list(self._txs.items()):
            if self._txs.get(key) is attempt:
                out += self._outputs(key, attempt, attempt.machine.tick(now), now)
        if self._ring_at is not None and self._ring_at <= now:
            self._ring_at = None
            if self._why is None:
                self._why = "no-answer"
            out += self._event(Ev.RING_TIMEOUT, now)
        if self._failover_at is not None and self._failover_at <= now:
            self._failover_at = None
            out += self._event(Ev.UNAVAILABLE, now, None, (408, "no response in time"))
        if self._give_up_at is not None and self._give_up_at <= now:
            self._give_up_at = None
            out += self._event(Ev.GIVE_UP, now)
        return out

    # -- the table's interpreter -------------------------------------------------------

    def _event(
        self,
        ev: Ev,
        now: float,
        response: Response | None = None,
        failure: tuple[int, str] | None = None,
    ) -> list[UacOutput]:
        row = TABLE.get((self.phase, ev))
        if row is None:
            return []
        self.phase, ops = row
        out: list[UacOutput] = []
        for op in ops:  # an op that may end the call itself (LOOKUP …) is last in its row
            self._run(op, now, response, failure, out)
        return out

    def _run(
        self,
        op: Op,
        now: float,
        response: Response | None,
        failure: tuple[int, str] | None,
        out: list[UacOutput],
    ) -> None:
        if op is Op.ARM_RING:
            self._ring_at = now + self.dial.ring_timeout
        elif op is Op.LOOKUP:
            self._lookup_next(now, out)
        elif op is Op.TRY_NEXT:
            self._next_address(now, out)
        elif op is Op.NOTE:
            if response is not None:
                self._last = (response.status, response.reason)
                self._answered_last = True
            elif failure is not None:
                self._last = failure
                self._answered_last = False
        elif op is Op.ABANDON:
            self._abandon()
        elif op is Op.STOP_FAILOVER:
            self._failover_at = None
        elif op is Op.REPORT:
            assert response is not None
            self._rang = True
            sdp = sdp_body(response.headers.get("Content-Type") or "", response.body)
            if sdp:
                self._early = sdp
            if response.status > 100:
                out.append(Progress(response.status, response.reason, bool(sdp)))
        elif op is Op.AUTHENTICATE:
            assert response is not None
            self._authenticate(response, now, out)
        elif op is Op.CANCEL:
            self._send_cancel(now, out)
        elif op is Op.ACK:
            self._send_ack(response, out)
        elif op is Op.ANSWER:
            assert response is not None
            out.append(self._answered(response))
        elif op is Op.FAIL:
            self._ring_at = self._failover_at = self._give_up_at = None
            out.append(self._failed())

    # -- ops ----------------------------------------------------------------------------

    def _lookup_next(self, now: float, out: list[UacOutput]) -> None:
        self._hop += 1
        if self._hop >= len(self._hops):
            self.phase = Phase.FAILED
            self._run(Op.FAIL, now, None, None, out)
            return
        hop = self._hops[self._hop]
        out.append(Lookup(hop.uri, hop.transport))

    def _next_address(self, now: float, out: list[UacOutput]) -> None:
        hop = self._hops[self._hop]
        if hop.next >= len(hop.addresses):
            self.phase = Phase.RESOLVING
            self._lookup_next(now, out)
            return
        self._flow = hop.addresses[hop.next]
        hop.next += 1
        self.phase = Phase.CALLING
        self._challenges = 0
        self._send_invite(now, out)

    def _send_invite(self, now: float, out: list[UacOutput]) -> None:
        hop = self._hops[self._hop]
        self._cseq += 1
        self._branch = MAGIC_COOKIE + self._new_id()
        transport = hop.transport
        dial, config = self.dial, self.config
        headers = Headers()
        headers.add("Via", f"SIP/2.0/{transport} {config.sent_by};branch={self._branch};rport")
        headers.add("Max-Forwards", "70")
        headers.add("From", f"<{dial.from_uri}>;tag={self.tag}")
        headers.add("To", f"<{dial.to_uri or dial.request_uri}>")
        headers.add("Call-ID", self.call_id)
        headers.add("CSeq", f"{self._cseq} INVITE")
        if "lr" in SipUri.parse(hop.uri).params:  # a loose-routing outbound proxy (§8.1.2)
            headers.add("Route", f"<{hop.uri}>")
        headers.add("Contact", config.contact)
        headers.add("Allow", ", ".join(config.allow))
        headers.add("User-Agent", config.user_agent)
        for name, value in dial.headers:
            headers.add(name, value)
        if self.digest is not None:
            for name, value in self.digest.headers("INVITE", dial.request_uri):
                headers.add(name, value)
        headers.add("Content-Type", "application/sdp")
        invite = Request(headers, self._offer, "INVITE", dial.request_uri)
        self._invite = invite
        machine = InviteClientTransaction(invite, transport != "UDP", config.timers)
        attempt = _Attempt(machine, self._flow, transport, hop.server_name)
        key = (self._branch, "INVITE")
        self._txs[key] = attempt
        self._failover_at = now + self.dial.failover_timeout
        out += self._outputs(key, attempt, machine.start(now), now)

    def _authenticate(self, response: Response, now: float, out: list[UacOutput]) -> None:
        self._challenges += 1
        why = (
            "no credentials for this trunk"
            if self.digest is None
            else "challenged too many times"
            if self._challenges > MAX_CHALLENGES
            else self.digest.accept(response)
        )
        if why is not None:
            self._last = (response.status, f"{response.reason} ({why})")
            self._answered_last = True
            self.phase = Phase.FAILED
            self._run(Op.FAIL, now, None, None, out)
            return
        self._send_invite(now, out)

    def _send_cancel(self, now: float, out: list[UacOutput]) -> None:
        invite = self._invite
        if self._cancel_sent or invite is None:
            return
        self._cancel_sent = True
        headers = Headers()
        headers.add("Via", invite.headers.get_all("Via")[0])
        headers.add("Max-Forwards", "70")
        for name in ("From", "To", "Call-ID"):
            headers.add(name, invite.headers.get(name) or "")
        headers.add("CSeq", f"{invite.cseq().seq} CANCEL")
        for name, value in invite.headers.raw("Route"):
            headers.add(name, value)
        headers.add("User-Agent", self.config.user_agent)
        cancel = Request(headers, b"", "CANCEL", invite.uri)
        hop = self._hops[self._hop]
        machine = NonInviteClientTransaction(cancel, hop.transport != "UDP", self.config.timers)
        attempt = _Attempt(machine, self._flow, hop.transport, hop.server_name)
        key = (self._branch, "CANCEL")
        self._txs[key] = attempt
        self._give_up_at = now + 64 * self.config.timers.t1
        out += self._outputs(key, attempt, machine.start(now), now)

    def _abandon(self) -> None:
        """Stop resending the current INVITE: its transaction goes, unless it is completing
        a final response (then it stays to ACK the retransmissions until Timer D)."""
        self._failover_at = None
        key = (self._branch, "INVITE")
        attempt = self._txs.get(key)
        if attempt is not None and attempt.machine.state in (State.CALLING, State.PROCEEDING):
            del self._txs[key]

    def _send_ack(self, response: Response | None, out: list[UacOutput]) -> None:
        """§13.2.2.4: the ACK of the 2xx, built once, sent again for each retransmission;
        with the INVITE's credentials, to the dialog's next hop (a name: the shell resolves
        it, the INVITE's address standing in); over TCP and TLS on the INVITE's connection,
        as the dialog's other requests (:func:`~telephony_edge.sip.nat.in_dialog_dest`)."""
        if self._ack is None:
            assert self._invite is not None and self._dialog is not None  # see _meaning
            dialog = self._dialog
            credentials = [
                (name, value)
                for name in ("Authorization", "Proxy-Authorization")
                for _, value in self._invite.headers.raw(name)
            ]
            seq = self._invite.cseq().seq
            ack = dialog.build_request(
                "ACK", self._new_id(), self.config.sent_by, credentials, cseq=seq
            )
            current = self._hops[self._hop]
            transport = current.transport
            try:
                hop = self._flow if transport != "UDP" else dialog.destination()
            except ValueError:  # not a SIP URI: _answered says so, the ACK goes to the flow
                hop = self._flow
            named = ip_literal(hop[0]) is None
            dest = self._flow if named else hop
            uri = dialog.next_hop() if named else None
            self._ack = SendRequest(ack.to_bytes(), dest, transport, uri, current.server_name)
        out.append(self._ack)

    def _answered(self, response: Response) -> Answered:
        assert self._invite is not None and self._dialog is not None
        dialog = self._dialog
        sdp = sdp_body(response.headers.get("Content-Type") or "", response.body) or self._early
        media: Negotiated | None = None
        problem: str | None = None
        if sdp is None:
            problem = "the answer carries no SDP"
        else:
            try:
                media = accept_answer(parse_sdp(sdp), self.media, self.local.offered_crypto)
            except ValueError as exc:  # SdpError, NoCommonCodec, SrtpRefused, a bad number
                problem = f"the SDP answer cannot be used: {str(exc)[:100]}"
            if media is not None and media.srtp is None and self.dial.srtp.policy == "required":
                problem = "SRTP required, the answer has none"
        try:
            dialog.validate()
        except ValueError:
            problem = problem or "the 2xx's Contact or Record-Route is not a SIP URI"
        self.bad = problem  # the callee's fault: bad input for the shell
        return Answered(
            dialog,
            self._invite,
            response,
            media,
            self._flow,
            self._hops[self._hop].transport,
            problem,
            self._why == "canceled",
        )

    def _failed(self) -> Failed:
        status, reason = self._last
        if self._why == "canceled":
            return Failed("canceled", 487, "cancelled before the answer")
        if self._why == "no-answer":
            if self._rang:
                return Failed("no-answer", 487, "no answer before the ring timeout")
            return Failed("failed", status, f"no response before the ring timeout ({reason})")
        if status in BUSY:
            return Failed("busy", status, reason)
        if status in NO_ANSWER and self._answered_last:  # a 408 of ours is no answer at all
            return Failed("no-answer", status, reason)
        return Failed("failed", status, reason)

    # -- transaction outputs ---------------------------------------------------------

    def _outputs(
        self, key: tuple[str, str], attempt: _Attempt, outputs: list[Output], now: float
    ) -> list[UacOutput]:
        out: list[UacOutput] = []
        events: list[tuple[Ev, Response | None, tuple[int, str]]] = []
        current = key == (self._branch, "INVITE")
        timer_b = (408, "no final response (Timer B)")
        for item in outputs:  # the transaction's own sends (an ACK) before what follows
            if isinstance(item, Transmit):
                dest, transport = attempt.dest, attempt.transport
                out.append(SendRequest(item.data, dest, transport, server_name=attempt.server_name))
            elif isinstance(item, Terminated):
                self._txs.pop(key, None)
            elif not current:
                continue  # a CANCEL's response or timeout, an old attempt's late final
            elif isinstance(item, TimedOut):
                giving_up = self.phase is Phase.CANCELLING
                events.append((Ev.GIVE_UP if giving_up else Ev.UNAVAILABLE, None, timer_b))
            elif isinstance(item, PassUp):
                events.append(self._meaning(item.response))
        for ev, response, failure in events:
            out += self._event(ev, now, response, failure)
        return out

    def _meaning(self, response: Response) -> tuple[Ev, Response | None, tuple[int, str]]:
        """The event a response to the current INVITE is; a 2xx that forms no dialog (its
        To or Contact unreadable) is a refusal of the call, never an error of ours."""
        ev = _classify(response.status)
        if ev is Ev.ANSWER and self._dialog is None:
            assert self._invite is not None
            try:
                self._dialog = Dialog.from_2xx(self._invite, response, self.config.contact)
            except ValueError:
                self.bad = "a 2xx whose To or Contact is unreadable"
                return Ev.REFUSED, None, (502, self.bad)
        return ev, response, (408, "no final response (Timer B)")


def _classify(status: int) -> Ev:
    if status < 200:
        return Ev.PROVISIONAL
    if status < 300:
        return Ev.ANSWER
    if status in (401, 407):
        return Ev.CHALLENGE
    if status in UNAVAILABLE:
        return Ev.UNAVAILABLE
    return Ev.REFUSED


def hop_transport(uri: str, default: str) -> str:
    """The transport to a hop: TLS for a ``sips:`` URI, else the one its URI names
    (``;transport=tcp``), else ``default``."""
    parsed = SipUri.parse(uri)
    if parsed.scheme == "sips":
        return "TLS"
    named = parsed.params.get("transport", "").upper()
    return named if named in ("UDP", "TCP", "TLS") else default.upper()
