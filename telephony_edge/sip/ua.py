"""The edge's SIP user agent (UAS, and UAC for its own calls), sans-I/O in the manner of h11.

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
  :meth:`send_request` and :meth:`set_draining`;
* the edge's own requests: :meth:`dial` (an outbound call,
  :mod:`~telephony_edge.sip.ua_dial`), :meth:`register` and :meth:`unregister`
  (:mod:`~telephony_edge.sip.ua_register`), and :meth:`resolved`, the answer to
  their :class:`Resolve` lookups.

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
  scheme) when :func:`~telephony_edge.sip.parse.parse_message` says a
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

from telephony_edge.sip.body import sdp_body
from telephony_edge.sip.dialog import Address, Dialog
from telephony_edge.sip.family import family_of
from telephony_edge.sip.message import Request, Response, build_response
from telephony_edge.sip.nat import (
    behind_nat,
    response_dest,
    stamp_via,
)
from telephony_edge.sip.parse import ParseError, parse_message
from telephony_edge.sip.refer import is_refer_event
from telephony_edge.sip.sdp import (
    Negotiated,
    NoCommonCodec,
    SessionDescription,
    SrtpRefused,
    negotiate,
    parse_sdp,
)
from telephony_edge.sip.session_timer import Negotiated as SessionTerms
from telephony_edge.sip.session_timer import TooSmall
from telephony_edge.sip.session_timer import negotiate as negotiate_timer
from telephony_edge.sip.transaction import (
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
    Transmit,
    cancel_target,
    client_key,
    server_key,
)
from telephony_edge.sip.trunks import Decision, Verdict
from telephony_edge.sip.ua_core import quote_warning, sdp_reason, unquoted
from telephony_edge.sip.ua_dial import Dials
from telephony_edge.sip.ua_records import (
    KNOWN_METHODS,
    Action,
    Call,
    CallEnded,
    CallRefused,
    Entry,
    InfoReceived,
    NotifyReceived,
    Phase,
    Send,
    StartCall,
    TransferResult,
)
from telephony_edge.sip.ua_register import Registrations
from telephony_edge.sip.ua_reoffer import Reoffers
from telephony_edge.sip.ua_resume import Resumes
from telephony_edge.sip.ua_transfer import Transfers
from telephony_edge.sip.uri import bracketed


class UserAgent(Reoffers, Transfers, Dials, Registrations, Resumes):
    """See the module docstring."""

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
        own = (self._dial_deadline(), self._registration_deadline(), self._resume_deadline())
        for clients in own:
            if clients is not None:
                deadlines.append(clients)
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
            actions += self._dial_tick(now) + self._registration_tick(now)
            actions += self._resume_tick(now)
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

    def reject(self, ref: str, code: int, now: float) -> list[Action]:
        call = self._calls.get(ref)
        if call is None or call.phase is not Phase.PENDING or not 300 <= code <= 699:
            return []
        return self._final(call, code, now, "rejected")

    def hangup(self, ref: str, now: float) -> list[Action]:
        """End the call from the edge: BYE when answered, 480 while pending, CANCEL while
        an outbound call rings."""
        cancelled = self._cancel_dial(ref, now)
        if cancelled is not None:
            return cancelled
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

    def resolved(
        self,
        owner: str,
        uri: str,
        addresses: list[Address],
        now: float,
        reason: str = "",
    ) -> list[Action]:
        """The shell's answer to :class:`Resolve` (``addresses`` empty: it failed, ``reason``
        says why). Never raises."""
        try:
            found = self._dial_resolved(owner, uri, addresses, reason, now)
            if found is None:
                found = self._registration_resolved(owner, addresses, reason, now)
            return found or []
        except Exception:
            self._note_error()
            return []

    def set_draining(self, draining: bool) -> None:
        self.draining = draining

    def connect_failed(self, ref: str, dest: Address, reason: str, now: float) -> list[Action]:
        """The shell could not open the connection to ``dest`` (TCP, TLS) that a Send of
        call ``ref`` needed: a call being placed tries its next address (RFC 3261
        §8.1.3.1); any other call's request is lost as a datagram would be, and its
        transaction times out. Never raises."""
        try:
            return self._dial_connect_failed(ref, dest, reason, now)
        except Exception:
            self._note_error()
            return []

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

    def _malformed(self, err: ParseError, source: Address, transport: str) -> list[Action]:
        self._bad(unquoted(err.reason), err.status if err.answerable else None)
        if err.request is None or err.status is None:
            self.stats.dropped += 1
            return []
        req = err.request
        status = err.status
        counter = {400: "answered_400", 505: "answered_505", 416: "answered_416"}[status]
        setattr(self.stats, counter, getattr(self.stats, counter) + 1)
        reason = "Bad Request" if status == 400 else None
        agent = bracketed(self.config.host_for(family_of(source[0])))  # §20.43's hostport
        extra = [("Warning", f'399 {agent} "{quote_warning(err.reason)}"')] if status == 400 else []
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
        if transport != "TLS" and req.uri[:5].lower() == "sips:":
            # RFC 5630 §3.1.3: SIPS is TLS on every hop, this last one too
            self._bad("a SIPS Request-URI over a transport that is not TLS", 416)
            return self._answer_tx(req, key, dest, transport, 416, now)
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
        entry = Entry(invite_tx, dest, transport, None, "invite")
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
        rules = self.config.srtp_rules(transport, verdict.trunk.srtp if verdict.trunk else None)
        if req.body:
            sdp = sdp_body(req.headers.get("Content-Type") or "", req.body)
            if sdp is None:
                code = 415
                self._bad("a body that is not SDP", code)
            else:
                try:
                    offer = parse_sdp(sdp)
                    media = negotiate(offer, self.config.media, rules)
                except SrtpRefused as exc:
                    code = 488
                    self._bad(f"SRTP refused: {unquoted(str(exc))}", code)
                except NoCommonCodec:
                    code = 488
                except ValueError as exc:  # SdpError, or a number int() refuses
                    code = 400
                    self._bad(f"bad SDP: {sdp_reason(exc)}", code)
        ref = self._new_id()
        secure = req.uri[:5].lower() == "sips:"
        contact = self.config.contact(transport, secure, family_of(source[0]))
        try:
            dialog = Dialog.from_invite(req, ref, contact, next(self._seq))
            dialog.transport = transport  # our Via's: the flow's, whatever theirs said
            dialog.validate()
        except ValueError:  # a bad Contact or Record-Route: no dialog can be kept
            self._bad("bad Contact or Record-Route", 400)
            response = build_response(req, 400, None, [], to_tag=ref)
            return actions + self._tx_respond(key, response, now)
        call = Call(ref, req, key, source, transport, dialog, offer, media=media)
        # the media's family: the offer's stream (negotiate took one the edge has), else
        # the signalling's (our offer goes where the INVITE came from)
        call.family = family_of(media.remote_address if media is not None else source[0])
        call.nated = behind_nat(req, source)
        call.trunk = verdict.trunk
        call.srtp_rules = rules
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
        start = StartCall(ref, req, offer, source, verdict.trunk, verdict.number, call.family)
        return [*actions, start]

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
            code = 200 if self._late_bye(req, now) else 481  # ua_resume: a move's end
            return self._answer_tx(req, key, dest, transport, code, now)
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

    def _on_response(self, response: Response, now: float) -> list[Action]:
        via = response.top_via()
        key = client_key(via.branch or "", response.cseq().method)
        entry = self._machines.get(key)
        machine = entry.machine if entry is not None else None
        if entry is None or not isinstance(
            machine, (NonInviteClientTransaction, InviteClientTransaction)
        ):
            # the edge's own INVITE or REGISTER (ua_dial, ua_register), or nothing of ours
            claimed = self._dial_response(response, now)
            if claimed is None:
                claimed = self._registration_response(response, now)
            if claimed is None:
                self.stats.dropped += 1
                return []  # a response to nothing of ours (or a stray 2xx retransmission)
            return claimed
        return self._outputs(key, entry, machine.receive_response(response, now), now)

    def _outputs(self, key: Key, entry: Entry, outputs: list[Output], now: float) -> list[Action]:
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
                elif self._resuming(call.ref, key):  # no answer at all: the dialog is gone
                    actions += self._resume_failed(call, 408, now)
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
                elif self._resuming(call.ref, key):
                    actions += self._resume_answered(call, out.response, now)
            elif isinstance(out, Terminated):
                self._machines.pop(key, None)
        self._machines.touch(key)
        return actions
