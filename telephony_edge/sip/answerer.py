"""Inbound SIP calls, from an admitted INVITE to the running call.

Theory of operation
-------------------
The sans-I/O UA admits an INVITE and says :class:`~telephony_edge.sip.ua_records.StartCall`;
:class:`Answerer` then finds the call's record in a task of its own: a dialled
number's call is created as its route says (like a Twilio call at its voice
webhook; the SIP Call-ID maps to one call); a registered call id is claimed
exactly once (``sip-reg:<call_id>`` in the coordinator; unknown, expired or
already claimed → 404, draining → 503). The allow-listed ``X-`` headers go
into the call's metadata. Then an RTP port is bound from the configured range,
the UA rings (``sip.ring_s``, or a 183 with ``sip.early_media``) and answers
200 with its SDP, and the call runs as any other,
``call_service.run(record, leg)``, once the ACK comes: the agent's session
starts at the ACK, so a spoofed INVITE over UDP costs an RTP port until Timer
H, never agent time.

Why apart from :mod:`telephony_edge.sip.transport`: the endpoint carries out
the UA's actions for every kind of call; what it takes to turn an admitted
INVITE into a call record and a leg is this module's one job, as placing
calls is :mod:`telephony_edge.sip.dialer`'s.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, cast

from telephony_edge.calls.leg import Direction, LegInfo
from telephony_edge.calls.record import CallRecord, CallState
from telephony_edge.calls.refusals import CallRejected
from telephony_edge.sip.leg import SipLeg
from telephony_edge.sip.rtp_socket import RtpProtocol
from telephony_edge.sip.ua_records import StartCall
from telephony_edge.sip.uri import SipUri

if TYPE_CHECKING:
    from telephony_edge.sip.transport import SipEndpoint

log = logging.getLogger(__name__)

PENDING_PREFIX = "sip-reg:"


def pending_key(call_id: str) -> str:
    return PENDING_PREFIX + call_id


def _settle(waiter: asyncio.Future[str | None] | None, failure: str | None) -> None:
    """Tell a call awaiting its ACK how it went (None: acknowledged)."""
    if waiter is not None and not waiter.done():
        waiter.set_result(failure)


class Answerer:
    """The endpoint's inbound calls; see the module docstring."""

    def __init__(self, endpoint: SipEndpoint) -> None:
        self.endpoint = endpoint
        self._acks: dict[str, asyncio.Future[str | None]] = {}  # answered calls awaiting ACK

    def acknowledged(self, ref: str) -> None:
        """The ACK of our 200 came: the call may run."""
        _settle(self._acks.pop(ref, None), None)

    def ended(self, ref: str, reason: str) -> None:
        """The UA ended the call: one still awaiting its ACK fails its setup."""
        _settle(self._acks.pop(ref, None), f"no ACK for the 200 OK ({reason})")

    def reject(self, ref: str, code: int, why: str) -> None:
        log.info("SIP call refused", extra={"sip_call": ref, "status": code, "reason": why})
        if self.endpoint.ua is not None:
            self.endpoint._apply(self.endpoint.ua.reject(ref, code, self.endpoint._now()))

    async def _record_for(self, start: StartCall) -> CallRecord | None:
        """The call record an admitted INVITE names (None: rejected here)."""
        ref, services = start.call, self.endpoint.services
        try:
            user = SipUri.parse(start.request.uri).user or ""
        except ValueError:
            user = ""
        if not user or len(user) > 128:
            self.reject(ref, 404, "no call id in the Request-URI")
            return None
        if not services.calls.accepting:
            self.reject(ref, 503, "draining")
            return None
        try:
            if start.number is not None:
                route = services.router.lookup(start.number)
                if route is None:  # the configuration changed meanwhile
                    self.reject(ref, 404, "no longer one of the edge's numbers")
                    return None
                from_uri = start.request.from_().sip_uri()
                record: CallRecord | None = await services.call_service.create_inbound(
                    route,
                    from_=from_uri.user or str(from_uri),
                    provider_call_id=start.request.call_id(),
                )
            else:
                claimed = await services.coordinator.claim_pending(pending_key(user))
                record = await services.call_service.get(user) if claimed is not None else None
        except CallRejected as exc:
            self.reject(ref, 486 if exc.http_status == 409 else 503, exc.reason)
            return None
        except Exception as exc:  # the coordinator is down: a trunk should try elsewhere
            # the edge's fault, but each INVITE would repeat it: once a minute per error
            admitted = self.endpoint._internal_errors.admit(f"admission {type(exc).__name__}")
            if admitted is not None:
                log.exception(
                    "SIP call not admitted",
                    extra={"sip_call": ref, "repeats": admitted.suppressed},
                )
            self.reject(ref, 503, "coordinator unavailable")
            return None
        if record is None or record.state is not CallState.CREATED:
            if self.endpoint.ua is not None and self.endpoint.ua.admission is not None:
                self.endpoint.ua.admission.penalize(start.source[0], self.endpoint._now())
            self.reject(ref, 404, "unknown, expired or already used call id")
            return None
        return record

    def _header_metadata(self, start: StartCall) -> dict[str, str]:
        """The allow-listed ``X-`` headers of the INVITE, for the call's metadata."""
        headers = start.request.headers
        found = {name: headers.get(name) for name in self.endpoint.settings.metadata_headers}
        return {name: value[:256] for name, value in found.items() if value}

    async def start(self, start: StartCall) -> None:
        """Find the call's record, ring, answer, and run the call once the ACK comes."""
        ua = self.endpoint.ua
        assert ua is not None
        ref, services = start.call, self.endpoint.services
        record = await self._record_for(start)
        if record is None:
            return
        record.metadata.update(self._header_metadata(start))
        try:
            rtp, port = await self.endpoint.rtp_ports.bind(start.family)  # the media's family
        except OSError as exc:
            return self.reject(ref, 503, str(exc))
        leg: SipLeg | None = None
        if self.endpoint.settings.early_media:
            progress = ua.progress(ref, port, self.endpoint._now())
            self.endpoint._apply(progress)
            pending = ua.calls().get(ref)
            if progress and pending is not None and pending.media is not None:
                # a 183 with our SDP went out: RTP flows from now (RFC 3960 gateways
                # cut early media through on it; the caller's NAT opens)
                leg = self._new_leg(start, record, rtp, port, early=True)
                leg.set_media(pending.media)
                self.endpoint.legs[ref] = leg
        elif self.endpoint.settings.ring_s > 0:
            self.endpoint._apply(ua.ringing(ref, self.endpoint._now()))
        if self.endpoint.settings.ring_s > 0:
            await asyncio.sleep(self.endpoint.settings.ring_s)
        ringing = ua.calls().get(ref)
        if ringing is not None:  # the proxy in front sends the ACK here (before the 200)
            sip_call_id = start.request.call_id()
            await self.endpoint.resumer.claim(
                ref, sip_call_id, ringing.transport, record.generation
            )
        call = ua.calls().get(ref)
        if call is None:  # CANCEL (or a timeout) while we looked it up or rang
            self.endpoint.resumer.release(ref)
            if leg is not None:
                await leg.close()  # its port goes back through release()
            else:
                rtp.close()
                self.endpoint.rtp_ports.release(port)
            # the registration is spent: the call record ends here, once (compare-and-set)
            await services.call_service.update_provider_status(record.call_id, "cancelled")
            log.info("SIP call cancelled before the answer", extra={"call_id": record.call_id})
            return
        if leg is None:
            leg = self._new_leg(start, record, rtp, port)
            if call.media is not None:
                leg.set_media(call.media)
            self.endpoint.legs[ref] = leg
        self.endpoint._call_ids[ref] = record.call_id
        acked = self._acks[ref] = asyncio.get_running_loop().create_future()
        self.endpoint._apply(ua.answer(ref, port, self.endpoint._now()))
        leg.hear()
        log.info(
            "SIP call answered",
            extra={"call_id": record.call_id, "sip_call": ref, "rtp_port": port},
        )
        try:
            # the agent's session starts at the ACK: a spoofed INVITE over UDP (whose 200
            # goes to someone who never asked) costs an RTP port until Timer H, no agent time
            failure = await acked
            if failure is not None:
                await services.call_service.fail_setup(record.call_id, failure)
                return
            await services.call_service.run(record, leg)
        except Exception:
            log.exception("SIP call failed", extra={"call_id": record.call_id})
        finally:
            await leg.close()

    def _new_leg(
        self, start: StartCall, record: CallRecord, rtp: RtpProtocol, port: int, early: bool = False
    ) -> SipLeg:
        """The call's media leg; ``early``: sending only, until the answer."""
        from_uri = start.request.from_().sip_uri()
        info = LegInfo(
            provider="sip",
            direction=cast(Direction, record.direction),
            from_=from_uri.user or str(from_uri),
            to=record.to or record.call_id,
            provider_call_id=start.request.call_id(),
        )
        return SipLeg(
            info,
            start.call,
            rtp,
            port,
            self.endpoint,
            rtp_timeout_s=self.endpoint.settings.rtp_timeout_s,
            jitter_max_ms=self.endpoint.settings.jitter_max_ms,
            pacer=self.endpoint.services.call_service.pacer,
            hearing=not early,
            resumable=self.endpoint.resumer.enabled,
        )
