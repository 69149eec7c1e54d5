"""Answering an INVITE and keeping the session up: 180/183 (reliable with 100rel,
RFC 3262), PRACK, the 2xx, and the session timer's refreshes (RFC 4028)."""

from __future__ import annotations

import secrets

from telephony_edge.sip.dialog import Address
from telephony_edge.sip.headers import is_digits
from telephony_edge.sip.message import Request, Response
from telephony_edge.sip.session_timer import Negotiated as SessionTerms
from telephony_edge.sip.session_timer import SessionTimer, session_expires
from telephony_edge.sip.transaction import (
    InviteClientTransaction,
    Key,
    Uas2xxRetransmitter,
    client_key,
)
from telephony_edge.sip.ua_core import UaCore
from telephony_edge.sip.ua_records import (
    Action,
    Call,
    Entry,
    Phase,
)


class Answering(UaCore):
    """The call-control verbs that answer, and what keeps an answered session alive."""

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
        call.local = self._local_session(rtp_port, call.family)
        body = call.local.answer(call.offer, call.media)
        return self._provisional(call, 183, body, now)

    def answer(self, ref: str, rtp_port: int, now: float) -> list[Action]:
        """200 with our SDP (the answer, or our offer for a delayed offer).
        Does nothing once the call is over (a late answer after CANCEL)."""
        call = self._calls.get(ref)
        if call is None or call.phase is not Phase.PENDING:
            return []
        call.local = call.local or self._local_session(rtp_port, call.family)
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
            body = self._offer(call, "sendrecv")
            call.awaiting_answer_in_ack = True
        terms, call.timer_offer = call.timer_offer, None
        actions = self._send_2xx(call, call.invite, call.tx_key, body, now, terms)
        self._start_timer(call, terms, now)
        return actions

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
        self._machines[key] = Entry(
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
        sent_by = self._sent_by(call)
        invite = dialog.build_request(
            "INVITE",
            self._new_id(),
            sent_by,
            [*headers, *self._sdp_headers(), ("User-Agent", self.config.user_agent)],
            call.local.again(),
        )
        ack = dialog.build_request("ACK", self._new_id(), sent_by, [], cseq=invite.cseq().seq)
        dest, uri = self._dialog_dest(call)
        machine = InviteClientTransaction(invite, call.transport != "UDP", self.config.timers)
        key = client_key(invite.top_via().branch or "", "INVITE")
        entry = Entry(
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


def early_answered(call: Call) -> bool:
    """The early dialog's offer and answer are done: our reliable 183's SDP was PRACKed."""
    return call.local is not None and call.rseq > 0 and call.provisional is None
