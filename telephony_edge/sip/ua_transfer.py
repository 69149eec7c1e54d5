"""Blind transfer by REFER (RFC 3515): one at a time per call, followed to the final
NOTIFY's sipfrag (RFC 3420), reported once as a :class:`TransferResult`."""

from __future__ import annotations

from telephony_edge.sip.header_values import NameAddr
from telephony_edge.sip.message import Request, Response
from telephony_edge.sip.refer import Referral, refer_to_uri, sipfrag_status
from telephony_edge.sip.ua_core import UaCore
from telephony_edge.sip.ua_records import (
    Action,
    Call,
    Phase,
    TransferResult,
)


class Transfers(UaCore):
    """:meth:`refer` and what answers it."""

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
