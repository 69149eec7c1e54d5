"""Control of a call from any worker: hang-up, transfer and AMD results reach the call's
owner through the coordinator, and the owner's answer comes back (or the call is found lost)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Any

from telephony_edge.calls.bridge import CallBridge
from telephony_edge.calls.leg import NotSupported
from telephony_edge.calls.machine import AmdReport
from telephony_edge.calls.record import CallRecord, CallState, CallStatus, new_id
from telephony_edge.calls.refusals import ControlFailed, Network, ProviderError
from telephony_edge.calls.service_core import LIVE_STATES, WORKER_LOST, ServiceCore
from telephony_edge.coord.base import DEFAULT_REPLY_TTL

log = logging.getLogger(__name__)

#: How long a hang-up / transfer request on one worker waits for the owner's answer.
CONTROL_REPLY_S = 3.0


class RemoteControl(ServiceCore):
    """See the module docstring."""

    async def report_amd(self, call_id: str, report: AmdReport) -> bool:
        """A network's answering-machine detection result, to the call's owner; False if none."""
        live = self.manager.get(call_id)
        if isinstance(live, CallBridge):
            live.report_amd(report)
            return True
        doc = await self.coordinator.get_call(call_id)
        if doc is None or doc.data.get("state") not in LIVE_STATES:
            log.warning("amd result for a call without media: dropped", extra={"call_id": call_id})
            return False
        return await self.coordinator.publish_control(
            call_id, {"action": "amd", "report": dataclasses.asdict(report)}
        )

    # -- control from any worker ------------------------------------------

    async def hangup(self, call_id: str, status: CallStatus = CallStatus.API_ENDED) -> bool:
        """End a call wherever it runs; False if the edge does not know it or it is over.

        On another worker the owner does it and answers (:meth:`_ask_owner`).
        """
        live = self.manager.get(call_id)
        if isinstance(live, CallBridge):
            await live.end("hang-up requested through the API")
            return True
        doc = await self.coordinator.get_call(call_id)
        if doc is not None and doc.data.get("state") in LIVE_STATES:
            return await self._ask_owner(CallRecord.from_dict(doc.data), {"action": "hangup"})
        found = await self._unbridged(call_id)
        if found is None:
            return False
        record, network = found
        await network.hangup(record)
        await self._end_stored(record, status, None)
        return True

    async def transfer(self, call_id: str, destination: str) -> bool:
        """Transfer a call wherever it runs; False if the edge does not know it or it is over."""
        live = self.manager.get(call_id)
        if isinstance(live, CallBridge):
            await live.transfer(destination)
            return True
        doc = await self.coordinator.get_call(call_id)
        if doc is not None and doc.data.get("state") in LIVE_STATES:
            message = {"action": "transfer", "destination": destination}
            return await self._ask_owner(CallRecord.from_dict(doc.data), message)
        found = await self._unbridged(call_id)
        if found is None:
            return False
        record, network = found
        await network.transfer(record, destination)
        record.transferred_to = destination
        await self._end_stored(record, CallStatus.API_ENDED, None)
        return True

    async def _ask_owner(self, record: CallRecord, message: dict[str, Any]) -> bool:
        """Have the owner of a bridged call carry out ``message`` and wait for its answer.

        True once the owner did it; False if the call ended meanwhile. Raises
        what the owner's attempt raised (:class:`ProviderError`,
        :class:`NotSupported`) or :class:`ControlFailed`: 409 when the owner's
        lease has lapsed (the call is reaped here and now, never a silent
        success), 504 when the owner did not answer within ``CONTROL_REPLY_S``.
        """
        call_id = record.call_id
        lost = ControlFailed(
            409,
            f"call {call_id} was lost: the worker handling it stopped renewing its lease "
            f"(it died or was cut off); the call has been ended with an error",
        )
        token = new_id("ctl")
        if not await self.coordinator.publish_control(call_id, {**message, "reply_to": token}):
            if await self._end_stored(record, CallStatus.ERROR, WORKER_LOST, lost=True):
                raise lost
            doc = await self.coordinator.get_call(call_id)
            if doc is not None and doc.data.get("error_message") == WORKER_LOST:
                raise lost  # another worker reaped it a moment before us
            return False  # it ended on its own meanwhile
        reply = await self.coordinator.wait_reply(token, within=CONTROL_REPLY_S)
        if reply is None:
            raise ControlFailed(
                504,
                f"the worker handling call {call_id} did not answer within {CONTROL_REPLY_S:g} s",
            )
        if reply.get("ok"):
            return True
        error = str(reply.get("error") or "the request failed")
        kind = reply.get("kind")
        if kind == "provider":
            status, code = reply.get("status"), reply.get("code")
            raise ProviderError(
                error,
                status=status if isinstance(status, int) else 0,
                code=code if isinstance(code, int) else None,
            )
        if kind == "not-supported":
            raise NotSupported(error)
        if kind == "gone":
            return False
        raise ControlFailed(502, error)

    async def _obey(self, call_id: str, message: dict[str, Any]) -> None:
        """Carry out a control message for one of our calls; answer if the sender waits."""
        live = self.manager.get(call_id)
        reply: dict[str, Any] = {"ok": True}
        try:
            if message.get("action") == "resume":  # a call of another worker, to take over
                reply = {"ok": await self._resume(call_id, message.get("generation"))}
            elif not isinstance(live, CallBridge):
                reply = {"ok": False, "kind": "gone", "error": "the call is over"}
            elif message.get("action") == "hangup":
                await live.end("hang-up requested through another worker")
            elif message.get("action") == "transfer":
                await live.transfer(str(message.get("destination", "")))
            elif message.get("action") == "amd":
                live.report_amd(AmdReport(**message["report"]))
            else:
                reply = {"ok": False, "kind": "error", "error": "unknown control action"}
        except NotSupported as exc:
            reply = {"ok": False, "kind": "not-supported", "error": str(exc)}
        except ProviderError as exc:
            reply = {
                "ok": False,
                "kind": "provider",
                "error": str(exc),
                "status": exc.status,
                "code": exc.code,
            }
        except Exception as exc:
            log.exception("control message %r failed", message, extra={"call_id": call_id})
            reply = {"ok": False, "kind": "error", "error": str(exc) or repr(exc)}
        token = message.get("reply_to")
        if isinstance(token, str):
            try:
                await self.coordinator.send_reply(token, reply, ttl=DEFAULT_REPLY_TTL)
            except Exception as exc:
                log.warning("control reply not sent: %s", exc, extra={"call_id": call_id})

    async def _resume(self, call_id: str, generation: object) -> bool:
        """Take over a call another worker asked this one to (its network's :meth:`resume`)."""
        if generation is not None and (
            isinstance(generation, bool) or not isinstance(generation, int)
        ):
            return False
        doc = await self.coordinator.get_call(call_id)
        network = None if doc is None else self.networks.get(str(doc.data.get("provider")))
        return network is not None and await network.resume(call_id, generation)

    async def _unbridged(self, call_id: str) -> tuple[CallRecord, Network] | None:
        """A call with no media on any worker yet (ringing), and its provider's network."""
        doc = await self.coordinator.get_call(call_id)
        if doc is None or doc.data.get("state") != CallState.CREATED:
            return None
        record = CallRecord.from_dict(doc.data)
        network = self.networks.get(record.provider)
        return None if network is None else (record, network)

    async def update_provider_status(
        self, call_id: str, provider_status: str, detail: str | None = None
    ) -> None:
        """A provider's status callback: merge it; end a call that never reached media.

        The merge touches ``provider_status`` alone, so a callback during the
        owner's teardown changes nothing else; and only a call still in
        ``created`` is ended here (compare-and-set), so the owner of a bridged
        call keeps the say over how it ended and its one webhook. ``detail``
        (what the network said: a SIP status and reason) follows the status's
        own words in the error message of a call it ends.
        """
        doc = await self.coordinator.update_call(call_id, {"provider_status": provider_status})
        if doc is None:
            log.warning(
                "status %r for an unknown call", provider_status, extra={"call_id": call_id}
            )
            return
        record = CallRecord.from_dict(doc.data)
        network = self.networks.get(record.provider)
        final = None if network is None else network.final_status(provider_status)
        if final is not None and record.state is CallState.CREATED:
            status, error = final
            if error is not None and detail:
                error = f"{error}: {detail}"
            await self._end_stored(record, status, error)

    async def fail_setup(self, call_id: str, error: str) -> bool:
        """The network could not bring the call's media here: end it ``error``, once.

        Only a call still waiting for its media (``created``) is ended; a call
        whose media arrived ends through its leg. Returns whether it was ended.
        """
        doc = await self.coordinator.get_call(call_id)
        if doc is None:
            return False
        return await self._end_stored(CallRecord.from_dict(doc.data), CallStatus.ERROR, error)

    async def _control_loop(self) -> None:
        async for call_id, message in self.coordinator.control_messages(self.worker_id):
            # each in a task: a slow transfer never holds up a hang-up behind it
            task = asyncio.create_task(self._obey(call_id, message), name=f"control-{call_id}")
            self._control_tasks.add(task)
            task.add_done_callback(self._control_tasks.discard)
