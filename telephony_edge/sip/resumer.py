"""SIP calls that outlive their worker: the route the proxy in front reads, and the takeover
by re-INVITE.

Theory of operation
-------------------
With ``sip.dialog_proxy`` the edge's Contact in every call names the proxy in
front of the workers (Kamailio: ``sip/examples/kamailio-resume.cfg``), so the
peer's requests in the dialog (the ACK, its re-INVITEs, its BYE) reach the
proxy whichever worker carries the call. The proxy asks Redis where the
dialog is: the *route* ``<prefix>route:sip:<Call-ID>`` holds the SIP URI of
the worker that carries it (:meth:`Resumer.claim`), written before the 200 OK
of an inbound call goes out, once the callee of a call the edge placed
answered, and by a worker that takes the call over before its re-INVITE. A
worker drops it :data:`ROUTE_LINGER_S` after the call's end (a request the
proxy is still relaying, such as the peer's BYE during a move, reaches the
worker that answers it), only while it still names that worker (a call that
moved keeps its new route: on a drain the old worker's stays until the new
one writes its own, so the peer's requests meanwhile reach the old worker,
whose UA answers a BYE 200 and the rest 481); its ttl is the longest call's.

The proxy notes each BYE from a peer in ``<prefix>route:sip-bye:<Call-ID>``
(:func:`bye_key`) before relaying it: when a worker dies, its callers' BYEs
go to it until a taking-over worker rewrites the route, and the proxy relays
them again to whatever the route names when the worker does not answer.

The call's dialog goes into its live state with the rest
(``SipLeg.network_state``: a :class:`~telephony_edge.sip.dialog_state.DialogSnapshot`).

:meth:`Resumer.resume` takes a call over on this worker, when this worker's
watch saw the call's worker die (:mod:`.liveness`, :meth:`Resumer.watch`) or
the worker that let it go on a drain asks (the control message ``resume``);
any number of workers may try at once:

1. the break (:func:`~telephony_edge.calls.migration.announce_break`): a call
   that is over is not resumed, nor a break of another generation than the
   one asked about;
2. the dialog from the live state, checked, and an RTP port: what can fail
   without the caller fails before the call is taken (a call nobody can take
   is ended by the lease reaper, its webhook with the conversation so far);
3. the takeover (``CallService.take_over``): one coordinator step, exactly
   one worker wins;
4. the route names this worker, and the UA adopts the dialog and re-INVITEs
   the peer with this worker's media (:mod:`~telephony_edge.sip.ua_resume`);
   unless the proxy saw the peer's BYE (:func:`bye_key`): then the call ends
   as the caller's hang-up here, nothing sent, and the BYE gets 200 when the
   proxy brings it (the peer answers a re-INVITE sent just before its BYE
   came with 481, which ends the call the same way);
5. the call runs here at once (``call_service.run`` with the resumption: the
   agent core gets the chat so far) while the peer answers: the answer's
   media is the leg's; a refusal ends the call ``error`` (``resume-failed``
   with the status), its one webhook carrying the conversation so far.

A call this worker lets go (its lease was taken over while it was cut off,
or a drain) leaves the UA without a BYE (:meth:`Resumer.let_go`): the dialog
is the new worker's.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from telephony_edge.calls import migration
from telephony_edge.calls.admission import least_loaded_worker
from telephony_edge.calls.bridge import CallOver
from telephony_edge.calls.leg import Direction, LegInfo
from telephony_edge.calls.record import CallRecord
from telephony_edge.calls.refusals import CallRejected
from telephony_edge.sip.dialog_state import DialogSnapshot
from telephony_edge.sip.leg import SipLeg
from telephony_edge.sip.liveness import Liveness
from telephony_edge.sip.rtp_socket import RtpProtocol
from telephony_edge.sip.uri import format_hostport

if TYPE_CHECKING:
    from telephony_edge.sip.transport import SipEndpoint

log = logging.getLogger(__name__)

#: how long a route outlives the longest call (``calls.max_duration_s``)
ROUTE_MARGIN_S = 600.0
#: how long a route outlives its call (64·T1: a BYE's transaction, relayed by the proxy)
ROUTE_LINGER_S = 32.0


def route_key(sip_call_id: str) -> str:
    """The coordinator's key of a dialog's route (Redis: ``<prefix>route:sip:<Call-ID>``)."""
    return f"sip:{sip_call_id}"


def bye_key(sip_call_id: str) -> str:
    """Where the proxy notes the peer's BYE in a dialog (``<prefix>route:sip-bye:<Call-ID>``)."""
    return f"sip-bye:{sip_call_id}"


@dataclass(frozen=True, slots=True)
class _Route:
    key: str
    target: str


class Resumer:
    """Routes and takeovers of one worker's SIP side; see the module docstring."""

    def __init__(self, endpoint: SipEndpoint) -> None:
        self.endpoint = endpoint
        self._routes: dict[str, _Route] = {}  # UA ref → the route it claimed
        self._generations: dict[str, int] = {}  # UA ref → the record's generation here

    @property
    def enabled(self) -> bool:
        """Calls outlive their worker: the Contact names the proxy in front."""
        return self.endpoint.settings.dialog_proxy is not None

    def own_uri(self, transport: str) -> str:
        """This worker's SIP URI, as the proxy sends a dialog's requests to it."""
        host, port = self.endpoint.advertised
        if transport == "TLS":
            port = self.endpoint.settings.advertised_tls_port or self.endpoint.tls_port
        uri = f"sip:{format_hostport(host, port)}"
        return uri if transport == "UDP" else f"{uri};transport={transport.lower()}"

    # -- routes --------------------------------------------------------------------------

    async def claim(self, ref: str, sip_call_id: str, transport: str, generation: int) -> None:
        """Send the dialog's requests here from now (a failure: logged; the proxy keeps the
        old route or none, and falls back to any worker, which answers 481)."""
        if not self.enabled:
            return
        route = _Route(route_key(sip_call_id), self.own_uri(transport))
        self._routes[ref] = route
        self._generations[ref] = generation
        services = self.endpoint.services
        ttl = services.settings.calls.max_duration_s + ROUTE_MARGIN_S
        try:
            await services.coordinator.put_route(route.key, route.target, ttl)
        except Exception as exc:
            log.warning("SIP route not written: %r", exc, extra={"sip_call": ref})

    def release(self, ref: str) -> None:
        """The call left this worker: its route goes after :data:`ROUTE_LINGER_S`, unless
        another worker's replaced it (a call that moved: at its takeover)."""
        route = self._routes.pop(ref, None)
        self._generations.pop(ref, None)
        if route is not None:
            self.endpoint._spawn(self._drop(ref, route))

    async def _drop(self, ref: str, route: _Route) -> None:
        try:
            await asyncio.sleep(ROUTE_LINGER_S)
        finally:  # at once when the worker stops
            try:
                await self.endpoint.services.coordinator.drop_route(route.key, route.target)
            except Exception as exc:  # it expires
                log.warning("SIP route not dropped: %r", exc, extra={"sip_call": ref})

    # -- takeover ------------------------------------------------------------------------

    async def resume(
        self, call_id: str, generation: int | None = None, lost_at: float | None = None
    ) -> bool:
        """Take the live call ``call_id`` over here and re-INVITE its peer (module
        docstring); ``generation``: only a break of that generation; ``lost_at``: when its
        worker was last seen alive (the move's gap counts from there). Whether it runs here
        now (False: over, not resumable, or another worker took it)."""
        endpoint, services = self.endpoint, self.endpoint.services
        ua = endpoint.ua
        if ua is None or not self.enabled:
            return False
        extra = {"call_id": call_id}
        if generation is not None:  # before a break is noted: none at another generation
            doc = await services.coordinator.get_call(call_id)
            if doc is None or int(doc.data.get("generation") or 0) != generation:
                log.info("SIP call not resumed: over, or taken over already", extra=extra)
                return False
        brk = await migration.announce_break(services.coordinator, call_id, lost_at=lost_at)
        if brk is None or generation not in (None, brk.generation):
            log.info("SIP call not resumed: over, or taken over already", extra=extra)
            return False
        live = await services.coordinator.get_live(call_id)
        try:
            snapshot = DialogSnapshot.from_dict(live.doc.get("network") if live else None)
            snapshot.dialog().validate()
        except ValueError as exc:
            log.warning("SIP call cannot be resumed: no usable dialog (%s)", exc, extra=extra)
            return False
        hung_up = await self._hung_up(snapshot.call_id)
        try:
            rtp, port = await endpoint.rtp_ports.bind(snapshot.family)
        except OSError as exc:
            log.warning("SIP call not resumed here: no RTP port (%s)", exc, extra=extra)
            return False
        try:
            record, resumed = await services.call_service.take_over(call_id, brk.generation)
        except (CallOver, CallRejected) as exc:
            rtp.close()
            endpoint.rtp_ports.release(port)
            log.info("SIP call not taken over here: %s", exc, extra=extra)
            return False
        ref, actions = ua.adopt(snapshot, port, endpoint._now(), hung_up=hung_up)
        endpoint.legs[ref] = leg = self._leg(ref, snapshot, rtp, port, record)
        endpoint._call_ids[ref] = call_id
        await self.claim(ref, snapshot.call_id, snapshot.transport, record.generation)
        endpoint._apply(actions)  # the re-INVITE (its answer's media goes to the leg), or the end
        log.info(
            "SIP call taken over: the caller hung up meanwhile (its BYE is at the proxy)"
            if hung_up
            else "SIP call taken over: re-INVITE with this worker's media",
            extra={**extra, "sip_call": ref, "rtp_port": port},
        )
        endpoint._spawn(self._run(leg, record, resumed))
        return True

    async def _hung_up(self, sip_call_id: str) -> bool:
        """Whether the proxy saw the peer's BYE in the dialog (a failed read: not seen; a
        re-INVITE the peer has hung up on is answered 481, which ends the call all the same)."""
        try:
            seen = await self.endpoint.services.coordinator.get_route(bye_key(sip_call_id))
        except Exception as exc:
            log.warning("the proxy's note of a BYE not read: %r", exc)
            return False
        return seen is not None

    def _leg(
        self, ref: str, snapshot: DialogSnapshot, rtp: RtpProtocol, port: int, record: CallRecord
    ) -> SipLeg:
        """The resumed call's leg (its media comes with the peer's answer)."""
        endpoint, settings = self.endpoint, self.endpoint.settings
        info = LegInfo(
            provider="sip",
            direction=cast(Direction, record.direction),
            from_=record.from_,
            to=record.to,
            provider_call_id=snapshot.call_id,
        )
        return SipLeg(
            info,
            ref,
            rtp,
            port,
            endpoint,
            rtp_timeout_s=settings.rtp_timeout_s,
            jitter_max_ms=settings.jitter_max_ms,
            pacer=endpoint.services.call_service.pacer,
            resumable=True,
        )

    async def _run(self, leg: SipLeg, record: CallRecord, resumed: migration.Resumption) -> None:
        try:
            await self.endpoint.services.call_service.run(record, leg, resumed)
        except Exception:
            log.exception("resumed SIP call failed", extra={"call_id": record.call_id})
        finally:
            await leg.close()

    async def watch(self) -> None:
        """See other SIP workers die and take their calls over (:mod:`.liveness`)."""
        worker_id = self.endpoint.services.call_service.worker_id
        await Liveness(self, worker_id).run()

    async def let_go(self, ref: str) -> None:
        """The call goes on on another worker: the UA forgets it without a BYE. On a drain
        (this worker takes no calls) the least-loaded ready worker is asked to take it
        over, at the generation it had here; a call another worker took over already
        (this worker was cut off) is that worker's, and nobody is asked."""
        endpoint = self.endpoint
        call_id, generation = endpoint._call_ids.get(ref), self._generations.get(ref)
        if endpoint.ua is not None:
            endpoint.ua.forget(ref, endpoint._now())
        self.release(ref)
        if call_id is not None and generation is not None and not endpoint.services.calls.accepting:
            await self._hand_to_another(call_id, generation)

    async def _hand_to_another(self, call_id: str, generation: int) -> None:
        services = self.endpoint.services
        extra = {"call_id": call_id}
        try:
            workers = await services.coordinator.live_workers()
            worker = least_loaded_worker(workers, services.call_service.worker_id)
            if worker is None:
                log.warning(
                    "no worker takes the SIP call over: it ends with its lease", extra=extra
                )
                return
            message = {"action": "resume", "generation": generation}
            await services.coordinator.send_control(worker, call_id, message)
        except Exception as exc:  # the lease reaper ends it, its webhook with the chat
            log.warning("SIP call not handed to another worker: %r", exc, extra=extra)
            return
        log.info("SIP call handed to %s", worker, extra=extra)
