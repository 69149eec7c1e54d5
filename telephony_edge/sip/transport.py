"""The asyncio shell around the sans-I/O :class:`~telephony_edge.sip.ua.UserAgent` (UDP).

Theory of operation
-------------------
:class:`SipEndpoint` owns the worker's SIP socket. Every datagram goes to
``UserAgent.receive`` with ``loop.time()``; the actions that come out are
carried out at once (``sendto``, legs ended, calls started), and one timer
handle follows ``UserAgent.next_deadline()`` so the UA's retransmissions and
timeouts fire on time. Nothing here parses SIP or decides protocol
behaviour.

A new call (:class:`~telephony_edge.sip.ua.StartCall`) is admitted in a task
of its own: the Request-URI's user must be a registered call id, claimed
exactly once (``sip-reg:<call_id>`` in the coordinator; unknown, expired or
already claimed → 404). Then an RTP port is bound from the configured range,
the UA answers 200 with its SDP, and the call runs as any other:
``call_service.run(record, leg)``. A BYE from the caller ends the leg
(``user-ended``); the edge's hang-up (agent ``end_call``, the API, drain)
comes back through :meth:`SipEndpoint.hangup` and the UA sends BYE.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, cast

from telephony_edge.calls.leg import Direction, LegInfo
from telephony_edge.calls.record import CallState
from telephony_edge.services import Services
from telephony_edge.sip.leg import RtpProtocol, SipLeg
from telephony_edge.sip.message import SipUri
from telephony_edge.sip.sdp import MediaConfig
from telephony_edge.sip.settings import SipSettings
from telephony_edge.sip.ua import (
    Action,
    CallConfirmed,
    CallEnded,
    InfoReceived,
    MediaUpdated,
    Send,
    StartCall,
    UaConfig,
    UserAgent,
    dtmf_from_info,
)

log = logging.getLogger(__name__)

PENDING_PREFIX = "sip-reg:"


def pending_key(call_id: str) -> str:
    return PENDING_PREFIX + call_id


class RtpPorts:
    """Binds RTP sockets on even ports of the configured range (RTCP would take the odd one)."""

    def __init__(self, host: str, low: int, high: int) -> None:
        self.host = host
        self.low = low + (low % 2)
        self.high = high
        self._next = self.low
        self.in_use: set[int] = set()

    async def bind(self) -> tuple[RtpProtocol, int]:
        loop = asyncio.get_running_loop()
        span = (self.high - self.low) // 2 + 1
        for _ in range(span):
            port = self._next
            self._next = port + 2 if port + 2 <= self.high else self.low
            if port in self.in_use:
                continue
            try:
                _, protocol = await loop.create_datagram_endpoint(
                    RtpProtocol, local_addr=(self.host, port)
                )
            except OSError:
                continue
            self.in_use.add(port)
            return protocol, port
        raise OSError(f"no free RTP port in {self.low}-{self.high}")

    def release(self, port: int) -> None:
        self.in_use.discard(port)


class SipEndpoint(asyncio.DatagramProtocol):
    """The worker's SIP side over UDP; see the module docstring."""

    def __init__(self, services: Services, settings: SipSettings) -> None:
        self.services = services
        self.settings = settings
        self.ua: UserAgent | None = None
        self.port = 0  # bound
        self.legs: dict[str, SipLeg] = {}
        self.rtp_ports = RtpPorts(settings.bind_host, settings.rtp_port_min, settings.rtp_port_max)
        self._transport: asyncio.DatagramTransport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # -- life ---------------------------------------------------------------------------

    @property
    def advertised(self) -> tuple[str, int]:
        return self.settings.public_host, self.settings.advertised_port or self.port

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: self, local_addr=(self.settings.bind_host, self.settings.port)
        )
        self._transport = transport
        self.port = int(transport.get_extra_info("sockname")[1])
        host, port = self.advertised
        media = MediaConfig(
            address=host,
            preferences=self.settings.codecs,
            order="local" if self.settings.codec_order == "local" else "offer",
            wideband_first=self.settings.prefer_g722,
        )
        self.ua = UserAgent(UaConfig(host=host, port=port, media=media))
        log.info("SIP listening", extra={"sip_bind": f"{self.settings.bind_host}:{self.port}"})

    async def stop(self) -> None:
        for ref in list(self.legs):
            self.hangup(ref)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._timer is not None:
            self._timer.cancel()
        if self._transport is not None:
            self._transport.close()

    # -- input --------------------------------------------------------------------------

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        ua = self.ua
        if ua is None:
            return
        ua.set_draining(self.settings.reject_when_draining and not self.services.calls.accepting)
        now = asyncio.get_running_loop().time()
        self._apply(ua.receive(data, (str(addr[0]), int(addr[1])), now))
        self._log_internal_error()

    def _tick(self) -> None:
        self._timer = self._timer_at = None
        if self.ua is not None:
            self._apply(self.ua.tick(asyncio.get_running_loop().time()))

    def _log_internal_error(self) -> None:
        ua = self.ua
        if ua is not None and ua.last_error is not None:
            log.error("SIP user agent error (packet dropped):\n%s", ua.last_error)
            ua.last_error = None

    def _apply(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Send):
                if self._transport is not None:
                    self._transport.sendto(action.data, action.dest)
            elif isinstance(action, StartCall):
                self._spawn(self._start_call(action))
            elif isinstance(action, CallConfirmed | MediaUpdated):
                leg = self.legs.get(action.call)
                if leg is not None and action.media is not None:
                    leg.set_media(action.media)
            elif isinstance(action, InfoReceived):
                leg = self.legs.get(action.call)
                digit = dtmf_from_info(action.content_type, action.body)
                if leg is not None and digit is not None:
                    leg.dtmf(digit)
            elif isinstance(action, CallEnded):
                leg = self.legs.get(action.call)
                if leg is not None:
                    leg.ended("BYE" if action.reason == "remote_bye" else action.reason)
        self._schedule()

    def _schedule(self) -> None:
        at = self.ua.next_deadline() if self.ua is not None else None
        if at == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = at
        self._timer = None if at is None else asyncio.get_running_loop().call_at(at, self._tick)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- calls -------------------------------------------------------------------------

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    def _reject(self, ref: str, code: int, why: str) -> None:
        log.info("SIP call refused", extra={"sip_call": ref, "status": code, "reason": why})
        if self.ua is not None:
            self._apply(self.ua.reject(ref, code, self._now()))

    async def _start_call(self, start: StartCall) -> None:
        ua = self.ua
        assert ua is not None
        ref = start.call
        try:
            user = SipUri.parse(start.request.uri).user or ""
        except ValueError:
            user = ""
        services = self.services
        if not user or len(user) > 128:
            return self._reject(ref, 404, "no call id in the Request-URI")
        if not services.calls.accepting:
            return self._reject(ref, 503, "draining")
        try:
            claimed = await services.coordinator.claim_pending(pending_key(user))
            record = await services.call_service.get(user) if claimed is not None else None
        except Exception:  # the coordinator is down: a trunk should try elsewhere
            log.exception("SIP call not admitted", extra={"sip_call": ref})
            return self._reject(ref, 503, "coordinator unavailable")
        if record is None or record.state is not CallState.CREATED:
            return self._reject(ref, 404, "unknown, expired or already used call id")
        if self.settings.ring_s > 0:
            self._apply(ua.ringing(ref, self._now()))
            await asyncio.sleep(self.settings.ring_s)
        call = ua.calls().get(ref)
        if call is None:  # CANCEL (or a timeout) while we looked it up or rang
            # the registration is spent: the call record ends here, once (compare-and-set)
            await services.call_service.update_provider_status(record.call_id, "cancelled")
            log.info("SIP call cancelled before the answer", extra={"call_id": record.call_id})
            return
        try:
            rtp, port = await self.rtp_ports.bind()
        except OSError as exc:
            return self._reject(ref, 503, str(exc))
        from_uri = start.request.from_().sip_uri()
        info = LegInfo(
            provider="sip",
            direction=cast(Direction, record.direction),
            from_=from_uri.user or str(from_uri),
            to=user,
            provider_call_id=start.request.call_id(),
        )
        leg = SipLeg(info, ref, rtp, port, self, rtp_timeout_s=self.settings.rtp_timeout_s)
        if call.media is not None:
            leg.set_media(call.media)
        self.legs[ref] = leg
        self._apply(ua.answer(ref, port, self._now()))
        log.info(
            "SIP call answered",
            extra={"call_id": record.call_id, "sip_call": ref, "rtp_port": port},
        )
        try:
            await services.call_service.run(record, leg)
        except Exception:
            log.exception("SIP call failed", extra={"call_id": record.call_id})
        finally:
            await leg.close()

    # -- CallControl (from the legs) ---------------------------------------------------

    def hangup(self, ref: str) -> None:
        if self.ua is not None:
            self._apply(self.ua.hangup(ref, self._now()))

    def release(self, ref: str) -> None:
        leg = self.legs.pop(ref, None)
        if leg is not None:
            self.rtp_ports.release(leg.port)
