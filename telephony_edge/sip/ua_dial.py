"""Outbound calls in the UA: each :class:`~telephony_edge.sip.uac.OutboundInvite` until its
answer, then its dialog as one of the UA's calls.

:meth:`Dials.dial` starts one. A response whose Call-ID and branch are a
dial's goes to that dial (in-dialog requests of the call, its BYE, keep their
own transactions in the UA's table); its timers are the UA's deadlines, and
its lookups are :class:`Resolve` actions for the shell. A 2xx makes the call
one of the UA's like an answered INVITE's, ``CONFIRMED`` with the dialog the
2xx formed (a BYE either way, re-INVITE and UPDATE answered, INFO, REFER),
and the shell hears :class:`CallConfirmed`. An answer the edge cannot use
(no SDP answer, no codec it has, no SRTP when the trunk requires it), or one
that crossed the API's CANCEL, is hung up at once (BYE), and the shell hears
:class:`DialFailed` as for a call that was never answered. Over TLS our Via
and Contact are the TLS listener's (``sips:`` for a ``sips:`` Request-URI), and
a connection the shell could not open (:meth:`UserAgent.connect_failed`: a
certificate not trusted …) moves the dial to its next address.
:meth:`UserAgent.hangup` of a ringing call CANCELs it. A dial is forgotten
once its machine is done (Timer M after the 2xx).
"""

from __future__ import annotations

from typing import Any

from telephony_edge.sip.client_outputs import Lookup, SendRequest
from telephony_edge.sip.digest_client import DigestClient
from telephony_edge.sip.message import Response
from telephony_edge.sip.ua_core import UaCore
from telephony_edge.sip.ua_records import (
    Action,
    Call,
    CallConfirmed,
    CallProgress,
    DialFailed,
    Phase,
    Resolve,
    Send,
)
from telephony_edge.sip.uac import (
    Answered,
    Dial,
    Failed,
    OutboundInvite,
    Progress,
    UacConfig,
    UacOutput,
)


class Dials(UaCore):
    """:meth:`dial` and what answers it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._dials: dict[str, tuple[str, OutboundInvite]] = {}  # SIP Call-ID → (ref, dial)
        self._dial_ids: dict[str, str] = {}  # ref → SIP Call-ID

    @property
    def dialling(self) -> int:
        """Outbound calls not answered yet (or answered within Timer M)."""
        return len(self._dials)

    def dial(
        self, plan: Dial, rtp_port: int, now: float, digest: DigestClient | None = None
    ) -> tuple[str, str, list[Action]]:
        """Place a call as ``plan`` says, our RTP on ``rtp_port``: its ref (the UA's name for
        the call from now on), its SIP Call-ID, and the first actions (a :class:`Resolve`)."""
        ref = self._new_id()
        config = self.config
        transport = plan.transport.upper()
        secure = plan.request_uri[:5].lower() == "sips:"  # §8.1.1.8: then a sips: Contact
        uac = UacConfig(
            sent_by=config.sent_by_for(transport, plan.family),
            contact=config.contact(transport, secure, plan.family),
            user_agent=config.user_agent,
            allow=config.allow,
            timers=config.timers,
        )
        local = self._local_session(rtp_port, plan.family)
        machine = OutboundInvite(plan, uac, local, local.config, digest, self._new_id)
        self._dials[machine.call_id] = (ref, machine)
        self._dial_ids[ref] = machine.call_id
        return ref, machine.call_id, self._dial_outputs(ref, machine, machine.start(now), now)

    def _cancel_dial(self, ref: str, now: float) -> list[Action] | None:
        """CANCEL a ringing call (None: ``ref`` is no dial being answered)."""
        found = self._dials.get(self._dial_ids.get(ref, ""))
        if found is None or ref in self._calls:
            return None
        return self._dial_outputs(ref, found[1], found[1].cancel(now), now)

    def _dial_response(self, response: Response, now: float) -> list[Action] | None:
        """A response to a dial's INVITE or CANCEL (None: not one)."""
        found = self._dials.get(response.call_id())
        if found is None or not found[1].owns(response):
            return None
        ref, machine = found
        actions = self._dial_outputs(ref, machine, machine.receive(response, now), now)
        if machine.bad is not None:  # the callee's fault: the shell counts and warns
            self._bad(machine.bad, None, ref)
            machine.bad = None
        return actions

    def _dial_resolved(
        self, owner: str, uri: str, addresses: list[tuple[str, int]], reason: str, now: float
    ) -> list[Action] | None:
        found = self._dials.get(self._dial_ids.get(owner, ""))
        if found is None:
            return None
        machine = found[1]
        outputs = (
            machine.resolved(uri, addresses, now)
            if addresses
            else machine.unresolvable(uri, reason, now)
        )
        return self._dial_outputs(owner, machine, outputs, now)

    def _dial_connect_failed(
        self, ref: str, dest: tuple[str, int], reason: str, now: float
    ) -> list[Action]:
        found = self._dials.get(self._dial_ids.get(ref, ""))
        if found is None:
            return []
        return self._dial_outputs(ref, found[1], found[1].connect_failed(dest, reason, now), now)

    def _dial_deadline(self) -> float | None:
        times = (machine.next_deadline() for _, machine in self._dials.values())
        return min((t for t in times if t is not None), default=None)

    def _dial_tick(self, now: float) -> list[Action]:
        actions: list[Action] = []
        for ref, machine in list(self._dials.values()):
            due = machine.next_deadline()
            if due is not None and due <= now:
                actions += self._dial_outputs(ref, machine, machine.tick(now), now)
        return actions

    def _dial_outputs(
        self, ref: str, machine: OutboundInvite, outputs: list[UacOutput], now: float
    ) -> list[Action]:
        actions: list[Action] = []
        for out in outputs:
            if isinstance(out, SendRequest):
                send = Send(out.data, out.dest, out.transport, ref, out.uri, out.server_name)
                actions.append(send)
            elif isinstance(out, Lookup):
                actions.append(Resolve(ref, out.uri, out.transport))
            elif isinstance(out, Progress):
                actions.append(CallProgress(ref, out.status, out.early_media))
            elif isinstance(out, Answered):
                actions += self._adopt(ref, machine, out, now)
            elif isinstance(out, Failed):
                actions.append(DialFailed(ref, out.outcome, out.status, out.reason))
        if machine.done:
            self._dials.pop(machine.call_id, None)
            self._dial_ids.pop(ref, None)
        return actions

    def _adopt(
        self, ref: str, machine: OutboundInvite, answered: Answered, now: float
    ) -> list[Action]:
        """The answered dial becomes one of the UA's calls (hung up at once if unusable)."""
        dialog = answered.dialog
        call = Call(
            ref,
            answered.invite,
            ("dial", ref),
            answered.flow,
            answered.transport,
            dialog,
            None,
            phase=Phase.CONFIRMED,
            media=answered.media,
            local=machine.local,
            family=machine.dial.family,
        )
        call.srtp_rules = machine.dial.srtp  # its re-offers keep to them
        self._calls[ref] = call
        self._dialogs[dialog.key] = ref
        if answered.problem is None and not answered.cancelled:
            return [CallConfirmed(ref, answered.media)]
        call.hangup_reported = True  # the shell hears DialFailed, not CallEnded
        outcome = "canceled" if answered.cancelled else "failed"
        reason = answered.problem or "answered after the CANCEL"
        status = answered.response.status
        return [*self._bye(call, now, "local_bye"), DialFailed(ref, outcome, status, reason)]
