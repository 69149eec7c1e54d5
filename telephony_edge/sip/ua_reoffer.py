"""Offers inside a dialog: re-INVITE and UPDATE answered (or countered with our offer),
glare (491), target refresh, and the ACK that confirms a 2xx (with a delayed offer's answer)."""

from __future__ import annotations

from telephony_edge.sip.body import sdp_body
from telephony_edge.sip.dialog import Address, DialogState
from telephony_edge.sip.message import (
    Request,
)
from telephony_edge.sip.nat import (
    behind_nat,
)
from telephony_edge.sip.sdp import (
    NoCommonCodec,
    SrtpRefused,
    accept_answer,
    negotiate,
    parse_sdp,
)
from telephony_edge.sip.session_timer import TooSmall
from telephony_edge.sip.session_timer import negotiate as negotiate_timer
from telephony_edge.sip.transaction import (
    InviteClientTransaction,
    InviteServerTransaction,
    Key,
    NonInviteServerTransaction,
    Uas2xxRetransmitter,
    _Machine,
)
from telephony_edge.sip.ua_answer import Answering, early_answered
from telephony_edge.sip.ua_core import check_contact, sdp_reason, unquoted
from telephony_edge.sip.ua_records import (
    Action,
    Call,
    CallConfirmed,
    Entry,
    MediaUpdated,
    Phase,
)


class Reoffers(Answering):
    """See the module docstring."""

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
        self._machines[key] = Entry(
            machine, dest, transport, call.ref, "invite" if req.method == "INVITE" else "server"
        )
        # RFC 3311 §5.1: an UPDATE may offer in an early dialog once its first offer and
        # answer are done (our 183's SDP, its PRACK received)
        early = req.method == "UPDATE" and call.phase is Phase.PENDING and early_answered(call)
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
            check_contact(req)
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
            rules = self.config.srtp_rules(transport, call.srtp_rules.policy)
            keep = call.media.srtp if call.media is not None else None
            assert call.local is not None  # checked above (an early UPDATE's too)
            try:
                offer = parse_sdp(sdp)
                # in the call's family only: its RTP socket cannot move to another
                media = negotiate(offer, call.local.config, rules, keep)
            except SrtpRefused as exc:
                self._bad(f"SRTP refused: {unquoted(str(exc))}", 488, call.ref)
                return self._tx_respond(key, self._response(req, 488, call), now)
            except NoCommonCodec:
                return self._tx_respond(key, self._response(req, 488, call), now)
            except ValueError as exc:  # SdpError, or a number int() refuses
                reason = f"bad SDP: {sdp_reason(exc)}"
                self._bad(reason, 400, call.ref)
                return self._tx_respond(key, self._response(req, 400, call), now)
            body = call.local.answer(offer, media)
            if media != call.media:
                call.media = media
                updates.append(MediaUpdated(call.ref, media))
        elif req.method == "UPDATE":
            return self._tx_respond(key, self._response(req, 200, call, timer_headers), now)
        else:
            assert call.local is not None
            direction = call.media.direction if call.media is not None else "sendrecv"
            body = self._offer(call, "sendrecv" if direction == "recvonly" else direction)
            if req.method == "INVITE":
                call.awaiting_answer_in_ack = True
        if req.method == "UPDATE":
            headers = timer_headers + self._sdp_headers()
            response = self._response(req, 200, call, headers, body)
            return self._tx_respond(key, response, now) + updates
        return self._send_2xx(call, req, key, body, now, terms) + updates

    def _offer_pending(self, call: Call) -> bool:
        """Our own re-INVITE (a refresh, a resumption: it carries an offer) has no final
        response yet."""
        if self._resume_pending(call.ref):
            return True
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
            offered = call.local.offered_crypto if call.local is not None else None
            config = call.local.config if call.local is not None else self.config.media
            try:
                media = accept_answer(parse_sdp(req.body), config, offered)
                if media.srtp is None and call.srtp_rules.policy == "required":
                    raise SrtpRefused("SRTP required, the answer has none")
                call.media = media
            except ValueError as exc:  # SdpError, or a number int() refuses
                reason = f"bad SDP answer in the ACK: {sdp_reason(exc)}"
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
