"""A call another worker began, carried on here: the dialog adopted from its snapshot and the
re-INVITE that moves the media to this worker.

Theory of operation
-------------------
:meth:`Resumes.adopt` takes a :class:`~telephony_edge.sip.dialog_state.DialogSnapshot`
(the dialog and media the call's first worker kept in the call's live state)
and makes the call one of this UA's, ``CONFIRMED``, with a new ref. Its first
request is a re-INVITE (RFC 3261 §14.1) whose offer is this worker's media
address (the new RTP port ``rtp_port``), the same codec and payload types
(RFC 3264 §8.3.2), and the session's ``o=`` id and address with the version
raised by one (§8). Its CSeq continues the dialog's, past it by
:data:`CSEQ_LEAP`: the snapshot is at most a second old, and the requests the
first worker sent since (an INFO per key) must not make the peer see this one
as out of order (§12.2.2 asks for larger, not for the next).

What answers it:

======================  ============================================================
a 2xx with an answer    ACK (§13.2.2.4); the answer is the call's media, the 2xx's
                        Contact its new target, its Session-Expires its timer:
                        :class:`CallConfirmed`
491 (glare, §14.1)      again after 0-2 s (we did not make the Call-ID), at most
                        :data:`MAX_ATTEMPTS` in all; meanwhile the peer's own
                        re-INVITE gets 491 too (``Reoffers._offer_pending``)
481                     the peer has no such dialog: it hung up while no worker
                        carried the call (its BYE went to the dead one, and the
                        proxy may still bring it here): the call ends as the
                        peer's hang-up (``remote_bye``), nothing sent
408, no answer at all   the dialog is gone (§12.2.1.2): the call ends, nothing sent
(Timer B)
another final answer,   BYE: the session still names the dead worker's media, so
an unusable answer,     nothing would flow
only provisional ones
for 64*T1
======================  ============================================================

A resumption that fails ends the call :class:`CallEnded` ``resume_failed``
with the status. Requests from the peer meanwhile are the dialog's as ever (a
BYE ends the call ``remote_bye``).

A peer that hung up before the takeover (the proxy saw its BYE, and the
resumer asks ``adopt(..., hung_up=True)``; or it answers 481) is not
re-INVITEd: the call ends ``remote_bye`` at once, and the dialog is kept for
:data:`LATE_BYE_S` so that its BYE, which the proxy relays here once the
dead worker does not answer it, gets 200 rather than 481.

:meth:`Resumes.forget` is the other side: the worker that lost the call (it
was taken over, or handed it to another on a drain) drops the dialog without
a word, so the new worker's is the only one that speaks for it. A BYE the
proxy still brings here (a drain: the route names this worker until the new
one takes the call) gets 200 for :data:`LATE_BYE_S` as well: the proxy noted
it, so the new worker ends the call as the peer's hang-up instead of
re-INVITEing (and a re-INVITE it sent already is answered 481, which ends it
the same way). :meth:`Resumes.dialog_state` is the snapshot for
the call's live state.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from telephony_edge.sip import sdes
from telephony_edge.sip.body import sdp_body
from telephony_edge.sip.dialog import Address, Dialog
from telephony_edge.sip.dialog_state import DialogSnapshot, snapshot_of
from telephony_edge.sip.family import family_of
from telephony_edge.sip.header_values import NameAddr
from telephony_edge.sip.message import Request, Response
from telephony_edge.sip.sdp import LocalSession, SrtpRefused, accept_answer, parse_sdp
from telephony_edge.sip.session_timer import SessionTimer, session_expires
from telephony_edge.sip.transaction import InviteClientTransaction, Key, client_key
from telephony_edge.sip.ua_core import UaCore, sdp_reason
from telephony_edge.sip.ua_records import Action, Call, CallConfirmed, CallEnded, Entry, Phase
from telephony_edge.sip.uri import SipUri

#: how far past the snapshot's CSeq the first request of this worker goes (module docstring)
CSEQ_LEAP = 100
MAX_ATTEMPTS = 3  # re-INVITEs sent in all when the peer answers 491
GLARE_WAIT_S = 2.0  # §14.1, for the side that did not make the Call-ID
MAX_SEQ = 2**31 - 1
#: how long a dialog that ended or left here during a move answers its BYE with 200 (64·T1:
#: the BYE's client transaction at the peer, which the proxy relays meanwhile)
LATE_BYE_S = 32.0

_RNG = random.Random()


@dataclass(slots=True)
class _Resume:
    """One call's resumption: its re-INVITE while it runs, or when to send it again."""

    key: Key | None
    deadline: float  # a final answer by then, or the resumption failed
    retry_at: float | None = None
    attempts: int = 1


class Resumes(UaCore):
    """:meth:`adopt` and :meth:`dialog_state`; see the module docstring."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._resumes: dict[str, _Resume] = {}  # ref → its resumption, until answered
        self._late_byes: dict[tuple[str, str, str], float] = {}  # dialog → until when

    def dialog_state(self, ref: str, record_id: str) -> DialogSnapshot | None:
        """The call's dialog for its live state; None until it is confirmed with media
        (or while it is being resumed here, or once it is ending)."""
        call = self._calls.get(ref)
        if call is None or call.phase is not Phase.CONFIRMED or call.hangup_reported:
            return None
        return None if ref in self._resumes else snapshot_of(call, record_id)

    def adopt(
        self, snapshot: DialogSnapshot, rtp_port: int, now: float, *, hung_up: bool = False
    ) -> tuple[str, list[Action]]:
        """Carry on the call of ``snapshot`` with our RTP on ``rtp_port``: its ref here and
        the re-INVITE; ``hung_up``: the peer hung up meanwhile, so no re-INVITE, the call
        ends ``remote_bye`` (module docstring). ValueError when the dialog cannot be used
        (or is here already)."""
        dialog = snapshot.dialog()
        dialog.validate()
        if dialog.key in self._dialogs:
            raise ValueError("this worker carries the dialog already")
        if hung_up:
            ref = self._new_id()
            self._answer_bye_later(dialog.key, now)
            return ref, [CallEnded(ref, "remote_bye")]
        dialog.local_seq = min(snapshot.local_seq + CSEQ_LEAP, MAX_SEQ - MAX_ATTEMPTS)
        media = self.config.media.for_family(snapshot.family)
        local = LocalSession(
            media, rtp_port, snapshot.sdp_session_id, snapshot.sdp_version + 1, snapshot.sdp_origin
        )
        rules = snapshot.srtp_rules
        keyed = (snapshot.media.srtp or rules.policy == "required") and rules.srtp_allowed
        crypto = sdes.offer(None) if keyed else None  # keys of our own (module docstring)
        secure = rules.policy == "required" or snapshot.media.profile in sdes.SAVP
        local.offer("sendrecv", crypto, secure, snapshot.media.formats())
        ref = self._new_id()
        timer = None
        if snapshot.session_interval is not None:
            timer = SessionTimer(
                snapshot.session_interval, snapshot.we_refresh, use_update=snapshot.use_update
            )
        invite, ack = self._resume_invite(dialog, snapshot.transport, snapshot.flow, timer, local)
        call = Call(
            ref,
            invite,
            ("resume", ref),
            snapshot.flow,
            snapshot.transport,
            dialog,
            None,
            phase=Phase.CONFIRMED,
            local=local,
            session=timer,
            family=snapshot.family,
        )
        call.nated = snapshot.nated
        call.srtp_rules = rules
        self._calls[ref] = call
        self._dialogs[dialog.key] = ref
        key, actions = self._start_resume(call, ack, now)
        self._resumes[ref] = _Resume(key, now + 64 * self.config.timers.t1)
        return ref, actions

    def _resume_invite(
        self,
        dialog: Dialog,
        transport: str,
        flow: Address,
        session: SessionTimer | None,
        local: LocalSession,
    ) -> tuple[Request, bytes]:
        """The re-INVITE with our offer (the same one on a retry after 491), and its ACK."""
        headers = [("Supported", "timer")]
        if session is not None:
            refresher = "uac" if session.we_refresh else "uas"
            headers.append(("Session-Expires", f"{int(session.interval)};refresher={refresher}"))
        headers += [*self._sdp_headers(), ("User-Agent", self.config.user_agent)]
        sent_by = self.config.sent_by_for(transport, family_of(flow[0]))
        invite = dialog.build_request("INVITE", self._new_id(), sent_by, headers, local.again())
        ack = dialog.build_request("ACK", self._new_id(), sent_by, [], cseq=invite.cseq().seq)
        return invite, ack.to_bytes()

    def _start_resume(self, call: Call, ack: bytes, now: float) -> tuple[Key, list[Action]]:
        """Send the call's re-INVITE (``call.invite``) in a client transaction of its own."""
        invite = call.invite
        machine = InviteClientTransaction(invite, call.transport != "UDP", self.config.timers)
        key = client_key(invite.top_via().branch or "", "INVITE")
        dest, uri = self._dialog_dest(call)
        entry = Entry(machine, dest, call.transport, call.ref, "client", ack, uri, call.source)
        self._machines[key] = entry
        return key, self._outputs(key, entry, machine.start(now), now)

    def forget(self, ref: str, now: float) -> None:
        """The call goes on on another worker (it took the dialog over): drop it and its
        transactions, sending nothing and reporting no end; its BYE gets 200 for a while
        (module docstring)."""
        call = self._calls.get(ref)
        if call is None:
            return
        self._answer_bye_later(call.dialog.key, now)
        for key in list(self._machines):
            entry = self._machines.get(key)
            if entry is not None and entry.call == ref:
                self._machines.pop(key, None)
        self._resumes.pop(ref, None)
        call.provisional = call.retransmitter = None  # popped above
        call.hangup_reported = True  # so _end reports nothing
        self._end(call, "moved")

    def _answer_bye_later(self, dialog: tuple[str, str, str], now: float) -> None:
        for key, until in list(self._late_byes.items()):
            if until <= now:
                del self._late_byes[key]
        self._late_byes[dialog] = now + LATE_BYE_S

    def _late_bye(self, req: Request, now: float) -> bool:
        """Whether ``req`` is the BYE of a dialog that ended or left here during a move."""
        key = (req.call_id(), req.to().tag or "", req.from_().tag or "")
        return req.method == "BYE" and self._late_byes.get(key, now) > now

    # -- what answers it ---------------------------------------------------------------

    def _resume_pending(self, ref: str) -> bool:
        return ref in self._resumes

    def _resuming(self, ref: str, key: Key) -> bool:
        """Whether ``key`` is the running re-INVITE of the call's resumption."""
        resume = self._resumes.get(ref)
        return resume is not None and resume.key == key

    def _resume_answered(self, call: Call, response: Response, now: float) -> list[Action]:
        status = response.status
        if status < 200:
            return []
        resume = self._resumes.pop(call.ref)
        if status < 300:
            return self._resumed(call, response, now)
        if status == 481:  # the peer hung up while no worker carried the call
            self._answer_bye_later(call.dialog.key, now)
            return self._end(call, "remote_bye")
        if status == 491 and resume.attempts < MAX_ATTEMPTS:
            resume.key, resume.attempts = None, resume.attempts + 1
            resume.retry_at = now + _RNG.uniform(0.0, GLARE_WAIT_S)
            resume.deadline = resume.retry_at + 64 * self.config.timers.t1
            self._resumes[call.ref] = resume
            return []
        return self._resume_failed(call, status, now)

    def _resumed(self, call: Call, response: Response, now: float) -> list[Action]:
        """A 2xx (its ACK is sent already): the answer becomes the call's media."""
        local = call.local
        assert local is not None
        try:
            sdp = sdp_body(response.headers.get("Content-Type") or "", response.body)
            if sdp is None:
                raise SrtpRefused("no SDP answer to our offer")
            media = accept_answer(parse_sdp(sdp), local.config, local.offered_crypto)
            if media.srtp is None and call.srtp_rules.policy == "required":
                raise SrtpRefused("SRTP required, the answer has none")
        except ValueError as exc:  # SdpError, or a number int() refuses
            self._bad(
                f"bad SDP answer to the resuming re-INVITE: {sdp_reason(exc)}", None, call.ref
            )
            return self._resume_failed(call, response.status, now)
        call.media = media
        contacts = response.headers.get_all("Contact")
        try:  # a 2xx to a re-INVITE is a target refresh (§12.2.1.2)
            target = NameAddr.parse(contacts[0]).uri if contacts else ""
            if target and SipUri.parse(target).scheme in ("sip", "sips"):
                call.dialog.remote_target = target
        except ValueError:
            self._bad("bad Contact in the answer to the resuming re-INVITE", None, call.ref)
        agreed = session_expires(response)
        if agreed is None:
            call.session = None  # §7.2: no Session-Expires in the 2xx, no timer
        else:
            call.session = SessionTimer(
                float(agreed[0]),
                agreed[1] != "uas",  # "uac" is us, the re-INVITE's client (§7.4)
                use_update=call.session.use_update if call.session else True,
            )
            call.session.restart(now)
        self._arm_keepalive(call, now)
        return [CallConfirmed(call.ref, media)]

    def _resume_failed(
        self, call: Call, status: int, now: float, *, bye: bool = False
    ) -> list[Action]:
        """The call ends ``resume_failed``: with BYE unless the dialog is gone already
        (408, 481: §12.2.1.2), or ``bye`` all the same (no final answer in time)."""
        self._resumes.pop(call.ref, None)
        bye = bye or status not in (408, 481)
        sent = self._client(call, "BYE", now) if bye else []
        return sent + self._end(call, "resume_failed", status)

    # -- timers -------------------------------------------------------------------------

    def _resume_deadline(self) -> float | None:
        times = [
            r.retry_at if r.retry_at is not None else r.deadline for r in self._resumes.values()
        ]
        return min(times, default=None)

    def _resume_tick(self, now: float) -> list[Action]:
        actions: list[Action] = []
        for ref, resume in list(self._resumes.items()):
            call = self._calls.get(ref)
            if call is None:  # ended meanwhile (the peer's BYE)
                del self._resumes[ref]
            elif resume.retry_at is not None and resume.retry_at <= now:
                assert call.local is not None
                resume.retry_at = None
                transport, flow = call.transport, call.source
                call.invite, ack = self._resume_invite(
                    call.dialog, transport, flow, call.session, call.local
                )
                resume.key, sent = self._start_resume(call, ack, now)
                actions += sent
            elif resume.retry_at is None and resume.deadline <= now:
                if resume.key is not None:  # a provisional answer only: given up (§14.1)
                    self._machines.pop(resume.key, None)
                actions += self._resume_failed(call, 408, now, bye=True)
        return actions
