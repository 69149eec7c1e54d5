"""The shell of the edge's outbound SIP calls: from ``Provider.dial`` to a running call.

Theory of operation
-------------------
:meth:`Dialer.dial` (``POST /start_outbound_call`` from a SIP number) plans
the INVITE (:mod:`telephony_edge.sip.dialplan`), binds the call's RTP port,
has the UA place it (:meth:`~telephony_edge.sip.ua.UserAgent.dial`) and
returns the SIP Call-ID at once, as Twilio returns its call sid. What
follows runs in a task of its own:

* 180 and 183 become the record's provider status (``ringing``,
  ``early-media``); the early media itself is played to nobody (RTP that
  arrives before the answer finds no leg and is dropped);
* the answer (the UA's :class:`~telephony_edge.sip.ua_records.CallConfirmed`)
  builds the call's :class:`~telephony_edge.sip.leg.SipLeg` on the bound
  port, and the call runs as any other (``call_service.run``: agent link,
  the edge's answering-machine detector, recording, webhooks);
* a call not answered (:class:`~telephony_edge.sip.ua_records.DialFailed`)
  frees its port, and its outcome (``busy``, ``no-answer``, ``failed``,
  ``canceled``) becomes the record's provider status, which the provider maps
  to the platform's ``call_status`` (a ``failed`` call's error message says
  the SIP status and why: a 503, a TLS certificate not trusted …); the record
  ends and its webhook goes.

A hang-up through the API while the call rings CANCELs it: at once on the
dialling worker (:meth:`Dialer.cancel`); from another worker the API ends the
call's record, and the dialling worker, which reads the record every
``RING_POLL_S`` while the call rings, CANCELs then.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from telephony_edge import metrics
from telephony_edge.calls.leg import LegInfo, NotSupported
from telephony_edge.calls.record import CallRecord, CallState
from telephony_edge.calls.refusals import ProviderError
from telephony_edge.sip.dialplan import NoRoute, plan_call
from telephony_edge.sip.leg import SipLeg
from telephony_edge.sip.rtp_socket import RtpProtocol
from telephony_edge.sip.sdp import Negotiated
from telephony_edge.sip.ua_records import CallProgress, DialFailed

if TYPE_CHECKING:
    from telephony_edge.sip.transport import SipEndpoint

log = logging.getLogger(__name__)

#: how often the dialling worker reads a ringing call's record (a hang-up from elsewhere)
RING_POLL_S = 1.0
PROGRESS_STATUS = {180: "ringing", 181: "ringing", 182: "queued", 183: "early-media"}


@dataclass(slots=True)
class _Dialling:
    record: CallRecord
    sip_call_id: str
    rtp: RtpProtocol
    port: int
    outcome: asyncio.Future[Negotiated | DialFailed | None]
    reported: set[str] = field(default_factory=set)
    ended: str | None = None  # the callee hung up between the answer and the leg


class Dialer:
    """See the module docstring."""

    def __init__(self, endpoint: SipEndpoint) -> None:
        self.endpoint = endpoint  # its UA, sockets and call bookkeeping are the dialer's too
        self._dialling: dict[str, _Dialling] = {}  # UA ref → the call being placed
        self._refs: dict[str, str] = {}  # the edge's call id → UA ref

    async def dial(self, record: CallRecord) -> str:
        """Place ``record``'s call; its SIP Call-ID. NotSupported: no trunk carries it;
        ProviderError: SIP is not running or no RTP port is free."""
        endpoint = self.endpoint
        ua = endpoint.ua
        if ua is None:
            raise ProviderError("SIP is not running on this worker")
        try:
            settings = endpoint.settings
            host, host6 = endpoint.advertised[0], settings.public_host6
            plan, digest = plan_call(settings, record.from_, record.to, host, host6)
        except NoRoute as exc:
            raise NotSupported(str(exc)) from None
        try:
            rtp, port = await endpoint.rtp_ports.bind(plan.family)  # the call's family
        except OSError as exc:
            raise ProviderError(f"no RTP port for the call: {exc}", status=503) from None
        ref, sip_call_id, actions = ua.dial(plan, port, endpoint._now(), digest)
        loop = asyncio.get_running_loop()
        dialling = _Dialling(record, sip_call_id, rtp, port, loop.create_future())
        self._dialling[ref] = dialling
        self._refs[record.call_id] = ref
        endpoint._call_ids[ref] = record.call_id  # for the endpoint's log lines
        endpoint._apply(actions)
        endpoint._spawn(self._follow(ref, dialling))
        log.info(
            "SIP outbound call placed",
            extra={"call_id": record.call_id, "sip_call_id": sip_call_id, "to": plan.request_uri},
        )
        return sip_call_id

    def cancel(self, call_id: str) -> bool:
        """CANCEL the call if it rings on this worker; False if it does not."""
        ref = self._refs.get(call_id)
        if ref is None:
            return False
        self.endpoint.hangup(ref)
        return True

    # -- what the UA says (SipEndpoint._apply) -------------------------------------------

    def progress(self, action: CallProgress) -> None:
        dialling = self._dialling.get(action.call)
        status = PROGRESS_STATUS.get(action.status, "progress")
        if dialling is None or status in dialling.reported:
            return
        dialling.reported.add(status)
        call_service = self.endpoint.services.call_service
        call_id = dialling.record.call_id
        self.endpoint._spawn(call_service.update_provider_status(call_id, status))

    def answered(self, ref: str, media: Negotiated | None) -> None:
        dialling = self._dialling.get(ref)
        if dialling is not None and not dialling.outcome.done():
            dialling.outcome.set_result(media)

    def failed(self, action: DialFailed) -> None:
        dialling = self._dialling.get(action.call)
        if dialling is not None and not dialling.outcome.done():
            dialling.outcome.set_result(action)

    def ended(self, ref: str, reason: str) -> bool:
        """The UA ended an answered call that has no leg yet; True if it is one of ours."""
        dialling = self._dialling.get(ref)
        if dialling is None:
            return False
        dialling.ended = reason
        return True

    # -- the call's task -----------------------------------------------------------------

    async def _follow(self, ref: str, dialling: _Dialling) -> None:
        record = dialling.record
        services = self.endpoint.services
        try:
            outcome = await self._until_answered(ref, dialling)
            if isinstance(outcome, DialFailed):
                self._free(dialling)
                metrics.SIP_OUTBOUND_CALLS.labels(outcome=outcome.outcome).inc()
                log.info(
                    "SIP outbound call not answered: %s",
                    outcome.outcome,
                    extra={
                        "call_id": record.call_id,
                        "status": outcome.status,
                        "reason": outcome.reason[:200],
                    },
                )
                detail = f"{outcome.status} {outcome.reason[:200]}"
                await services.call_service.update_provider_status(
                    record.call_id,
                    outcome.outcome,
                    detail if outcome.outcome == "failed" else None,
                )
                return
            metrics.SIP_OUTBOUND_CALLS.labels(outcome="answered").inc()
            leg = self._leg(ref, dialling)
            if outcome is not None:
                leg.set_media(outcome)
            self.endpoint.legs[ref] = leg
            call = self.endpoint.ua.calls().get(ref) if self.endpoint.ua else None
            if call is not None:  # its callee's requests come through the proxy in front
                resumer = self.endpoint.resumer
                await resumer.claim(ref, dialling.sip_call_id, call.transport, record.generation)
            leg.hear()
            if dialling.ended is not None:
                leg.ended("BYE")
            log.info("SIP outbound call answered", extra={"call_id": record.call_id})
            try:
                await services.call_service.update_provider_status(record.call_id, "in-progress")
                await services.call_service.run(record, leg)
            except Exception:
                log.exception("SIP outbound call failed", extra={"call_id": record.call_id})
            finally:
                await leg.close()
        finally:
            self._dialling.pop(ref, None)
            self._refs.pop(record.call_id, None)

    async def _until_answered(
        self, ref: str, dialling: _Dialling
    ) -> Negotiated | DialFailed | None:
        """The answer's media or the failure; meanwhile a hang-up through another worker
        (the record ended there) is noticed and CANCELs the call."""
        coordinator = self.endpoint.services.coordinator
        cancelled = False
        while True:
            try:
                return await asyncio.wait_for(asyncio.shield(dialling.outcome), RING_POLL_S)
            except TimeoutError:
                pass
            if cancelled:
                continue
            with contextlib.suppress(Exception):  # the coordinator away: asked again later
                doc = await coordinator.get_call(dialling.record.call_id)
                if doc is None or doc.data.get("state") == CallState.ENDED:
                    cancelled = True
                    log.info(
                        "SIP outbound call ended elsewhere while ringing: CANCEL",
                        extra={"call_id": dialling.record.call_id},
                    )
                    self.endpoint.hangup(ref)

    def _leg(self, ref: str, dialling: _Dialling) -> SipLeg:
        record, settings = dialling.record, self.endpoint.settings
        info = LegInfo(
            provider="sip",
            direction="outbound",
            from_=record.from_,
            to=record.to,
            provider_call_id=dialling.sip_call_id,
        )
        return SipLeg(
            info,
            ref,
            dialling.rtp,
            dialling.port,
            self.endpoint,
            rtp_timeout_s=settings.rtp_timeout_s,
            jitter_max_ms=settings.jitter_max_ms,
            pacer=self.endpoint.services.call_service.pacer,
            resumable=self.endpoint.resumer.enabled,
        )

    def _free(self, dialling: _Dialling) -> None:
        dialling.rtp.close()
        self.endpoint.rtp_ports.release(dialling.port)
