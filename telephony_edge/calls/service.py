"""Calls of this worker: create, run, control from anywhere, and hand over to webhooks.

The legs call :meth:`CallService.create` when the network announces a call
(a webhook, a registration) and :meth:`CallService.run` once its media is
here. Everything another worker may need goes through the Coordinator: the
record, the media owner, the agent's concurrency slot, control messages
(hang-up / transfer from whichever worker the API request landed on), and
the durable queue of end-of-call webhooks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any, Protocol

import aiohttp

from telephony_edge import metrics
from telephony_edge.agent.link import AgentLink, LinkTimeouts
from telephony_edge.calls import webhooks
from telephony_edge.calls.bridge import BridgeLimits, CallBridge, Conversation
from telephony_edge.calls.leg import Leg
from telephony_edge.calls.manager import CallManager
from telephony_edge.calls.pacing import Pacer
from telephony_edge.calls.record import CallRecord, CallState, CallStatus
from telephony_edge.calls.variables import call_variables, fill_placeholders, merge_agent_config
from telephony_edge.config import Settings
from telephony_edge.coord.base import Coordinator
from telephony_edge.routing import NumberRouter, Route

log = logging.getLogger(__name__)

HEARTBEAT_S = 5.0

#: Twilio's final call statuses for calls that never reached the edge's media.
PROVIDER_FINAL_STATUS: dict[str, tuple[CallStatus, str | None]] = {
    "completed": (CallStatus.USER_ENDED, None),
    "busy": (CallStatus.ERROR, "the called party was busy"),
    "no-answer": (CallStatus.ERROR, "the called party did not answer"),
    "failed": (CallStatus.ERROR, "the network could not place the call"),
    "canceled": (CallStatus.API_ENDED, None),
}


def _count_webhook(kind: str, outcome: str) -> None:
    metrics.WEBHOOK_RESULTS.labels(kind=kind, outcome=outcome).inc()


class CallRejected(Exception):
    """The edge will not take this call; ``http_status`` says how an API answers."""

    def __init__(self, http_status: int, reason: str) -> None:
        super().__init__(reason)
        self.http_status = http_status
        self.reason = reason


class ProviderError(Exception):
    """A provider's API refused a request or could not be reached.

    ``status`` is the provider's HTTP status (0: unreachable), ``code`` its
    own error code if it gave one. Controllers and dialers raise it so that
    the public API answers the same way whichever network a call is on.
    """

    def __init__(self, message: str, *, status: int = 0, code: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class Controller(Protocol):
    """Ends or transfers a call through a provider's API when no leg of it is here."""

    async def hangup(self, record: CallRecord) -> None: ...

    async def transfer(self, record: CallRecord, destination: str) -> None: ...


class CallService:
    """The calls of one worker."""

    def __init__(
        self,
        settings: Settings,
        router: NumberRouter,
        coordinator: Coordinator,
        manager: CallManager,
        worker_id: str,
        http: Callable[[], aiohttp.ClientSession],
    ) -> None:
        self.settings = settings
        self.router = router
        self.coordinator = coordinator
        self.manager = manager
        self.worker_id = worker_id
        self._http = http
        self.pacer = Pacer()
        self.demo_agent_url: str | None = None
        self._controllers: dict[str, Controller] = {}
        self._tasks: list[asyncio.Task[None]] = []
        calls = settings.calls
        self._limits = BridgeLimits(
            max_duration_s=calls.max_duration_s,
            inactivity_timeout_s=calls.inactivity_timeout_s,
            preconnect_buffer_s=calls.preconnect_buffer_s,
        )
        core = settings.agent_core
        self._timeouts = LinkTimeouts(
            connect_s=core.connect_timeout_s,
            ready_s=core.ready_timeout_s,
            ping_interval_s=core.ping_interval_s,
        )
        self._rates = webhooks.CostRates(**settings.costs.model_dump())
        self._dispatcher: webhooks.WebhookDispatcher | None = None

    # -- background work ---------------------------------------------------

    async def start(self) -> None:
        """Start the control loop, the webhook dispatcher and the heartbeat (app start-up)."""
        hooks = self.settings.webhooks
        self._dispatcher = webhooks.WebhookDispatcher(
            self.coordinator,
            self._http(),
            secret=hooks.signing_secret,
            retry=webhooks.RetryPolicy(
                max_attempts=hooks.max_attempts,
                base_delay=hooks.backoff_base_s,
                max_delay=hooks.backoff_max_s,
            ),
            on_result=_count_webhook,
            allow_private_targets=hooks.allow_private_targets,
        )
        self._tasks = [
            asyncio.create_task(self._control_loop(), name="control-loop"),
            asyncio.create_task(self._dispatcher.run(), name="webhook-dispatcher"),
            asyncio.create_task(self._heartbeat_loop(), name="heartbeat"),
        ]

    async def stop(self) -> None:
        """Stop background work; webhooks in flight get a moment to finish (app shutdown)."""
        if self._dispatcher is not None:
            await self._dispatcher.drain()
            if not self.coordinator.shared:  # no other worker will send what is queued
                await self._dispatcher.flush()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        await self.pacer.close()
        with contextlib.suppress(Exception):
            await self.coordinator.forget_worker(self.worker_id)

    def register_controller(self, provider: str, controller: Controller) -> None:
        self._controllers[provider] = controller

    # -- calls -------------------------------------------------------------

    async def create(
        self,
        *,
        agent_id: str,
        provider: str,
        direction: str,
        from_: str = "",
        to: str = "",
        agent_config: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
        include_metadata_in_prompt: bool = False,
        session_id: str | None = None,
        region: str = "",
        provider_call_id: str = "",
    ) -> CallRecord:
        """Record a call the network announced; raise CallRejected if the edge won't take it."""
        if not self.manager.accepting:
            raise CallRejected(503, "this worker is draining and takes no new calls")
        if agent_id not in self.settings.agents:
            raise CallRejected(404, f"unknown agent_id {agent_id!r}")
        record = CallRecord(
            agent_id=agent_id,
            provider=provider,
            direction=direction,
            from_=from_,
            to=to,
            agent_config=dict(agent_config or {}),
            metadata=dict(metadata or {}),
            include_metadata_in_prompt=include_metadata_in_prompt,
            session_continuation=session_id,
            region=region,
            provider_call_id=provider_call_id,
        )
        # a call whose media never arrives (caller hung up while ringing) is forgotten
        await self.coordinator.put_call(record, ttl=self.settings.calls.setup_ttl_s)
        log.info(
            "call created",
            extra={"call_id": record.call_id, "provider": provider, "direction": direction},
        )
        return record

    async def create_inbound(
        self, route: Route, *, from_: str, provider_call_id: str
    ) -> CallRecord:
        """Record an inbound call to one of the edge's numbers, as its route says."""
        return await self.create(
            agent_id=route.agent_id,
            provider=route.provider,
            direction="inbound",
            from_=from_,
            to=route.number,
            agent_config=route.agent_config,
            region=route.region_name,
            provider_call_id=provider_call_id,
        )

    async def get(self, call_id: str) -> CallRecord | None:
        live = self.manager.get(call_id)
        if isinstance(live, CallBridge):
            return live.record
        return await self.coordinator.get_call(call_id)

    async def run(self, record: CallRecord, leg: Leg) -> CallRecord:
        """Bridge ``leg`` to an agent core until the call ends; return the final record."""
        record.from_ = record.from_ or leg.info.from_
        record.to = record.to or leg.info.to
        record.provider_call_id = record.provider_call_id or leg.info.provider_call_id
        link = AgentLink(
            self._http(), self._agent_url(record), self._timeouts, call_id=record.call_id
        )
        bridge = CallBridge(
            record, leg, link, self.pacer, lambda: self._prepare(record), self._limits
        )
        refusal = await self._admit(record)
        if refusal is not None:
            bridge.finish(CallStatus.ERROR, refusal)
        self.manager.add(bridge)
        active = metrics.CALLS_ACTIVE.labels(provider=record.provider)
        active.inc()
        try:
            await bridge.run()
        finally:
            active.dec()
            try:
                await self._release(record)
                await self._record_end(record, bridge.conversation)
            finally:
                self.manager.discard(record.call_id)  # last: drain waits for all of the above
        return record

    async def _admit(self, record: CallRecord) -> str | None:
        if not self.manager.accepting:
            return "this worker is draining and takes no new calls"
        await self.coordinator.claim_owner(record.call_id, self.worker_id)
        record.owner = self.worker_id
        agent = self.settings.agents.get(record.agent_id)
        limit = agent.max_concurrent_calls if agent else None
        if limit and not await self.coordinator.acquire_agent_slot(
            record.agent_id, record.call_id, limit
        ):
            return f"agent {record.agent_id!r} is at its limit of {limit} concurrent calls"
        await self.coordinator.put_call(record)
        return None

    async def _release(self, record: CallRecord) -> None:
        with contextlib.suppress(Exception):
            await self.coordinator.release_agent_slot(record.agent_id, record.call_id)
            await self.coordinator.release_owner(record.call_id, self.worker_id)

    def _agent_url(self, record: CallRecord) -> str:
        url = self.router.agent_core_url(record.region or None) or self.demo_agent_url
        if url is None:
            raise RuntimeError("no agent core configured and the built-in one is not running")
        return url

    async def _prepare(self, record: CallRecord) -> dict[str, Any]:
        """Merge the agent config, run the prefetch webhook, fill variables: the initiate data."""
        stored = self.settings.agents[record.agent_id].model_dump(mode="json", exclude_none=True)
        config = merge_agent_config(stored, record.agent_config)
        extra_prompt = ""
        spec = config.get("extra_prompt_webhook")
        if spec:
            result = await webhooks.prefetch(
                self._http(),
                spec,
                session_id=record.session_id,
                agent_id=record.agent_id,
                from_=record.from_,
                to=record.to,
                metadata=record.metadata,
                call_id=record.call_id,
                on_result=_count_webhook,
                secret=self.settings.webhooks.signing_secret,
                allow_private_targets=self.settings.webhooks.allow_private_targets,
            )
            record.metadata = result.merged_metadata(record.metadata)
            extra_prompt = result.extra_prompt
        variables = call_variables(from_=record.from_, to=record.to, metadata=record.metadata)
        config = fill_placeholders(config, variables)
        if extra_prompt:
            config["prompt"] = f"{config.get('prompt', '')}\n\n{extra_prompt}".strip()
        record.agent_config = config
        initiate: dict[str, Any] = {
            "agent": {"agent_id": record.agent_id, "agent_config": config},
            "metadata": {**record.metadata, "FromPhone": record.from_, "ToPhone": record.to},
            "include_metadata_in_prompt": record.include_metadata_in_prompt,
            "call": {
                "call_id": record.call_id,
                "session_id": record.session_id,
                "provider": record.provider,
                "direction": record.direction,
                "from": record.from_,
                "to": record.to,
            },
        }
        if record.session_continuation:
            initiate["session_continuation"] = {"session_id": record.session_continuation}
        if extra_prompt:
            initiate["extra_prompt"] = extra_prompt
        return initiate

    async def _record_end(self, record: CallRecord, conversation: Conversation) -> None:
        status = record.call_status or CallStatus.ERROR
        metrics.CALLS_TOTAL.labels(provider=record.provider, status=str(status)).inc()
        await self.coordinator.put_call(record)
        agent_config = record.agent_config or self.settings.agents[record.agent_id].model_dump(
            mode="json", exclude_none=True
        )
        spec = agent_config.get("session_data_webhook")
        if not spec:
            return
        payload = webhooks.build_session_payload(
            record,
            transcript=conversation.chat,
            function_calls=conversation.function_calls,
            chars_used=conversation.chars_used,
            rates=self._rates,
        )
        try:
            await webhooks.enqueue_session_webhook(self.coordinator, spec, payload)
        except ValueError as exc:
            log.error("session webhook not queued: %s", exc, extra={"call_id": record.call_id})

    # -- control from any worker ------------------------------------------

    async def hangup(self, call_id: str, status: CallStatus = CallStatus.API_ENDED) -> bool:
        """End a call wherever it runs; False if the edge does not know it or it is over."""
        live = self.manager.get(call_id)
        if isinstance(live, CallBridge):
            live.finish(status)
            return True
        if await self.coordinator.publish_control(call_id, {"action": "hangup"}):
            return True
        found = await self._unbridged(call_id)
        if found is None:
            return False
        record, controller = found
        await controller.hangup(record)
        await self._end_unbridged(record, status, None)
        return True

    async def transfer(self, call_id: str, destination: str) -> bool:
        """Transfer a call wherever it runs; False if the edge does not know it or it is over."""
        live = self.manager.get(call_id)
        if isinstance(live, CallBridge):
            await live.transfer(destination)
            return True
        message = {"action": "transfer", "destination": destination}
        if await self.coordinator.publish_control(call_id, message):
            return True
        found = await self._unbridged(call_id)
        if found is None:
            return False
        record, controller = found
        await controller.transfer(record, destination)
        record.transferred_to = destination
        await self._end_unbridged(record, CallStatus.API_ENDED, None)
        return True

    async def _unbridged(self, call_id: str) -> tuple[CallRecord, Controller] | None:
        """A live call with no media on any worker (ringing), and its provider's controller."""
        record = await self.coordinator.get_call(call_id)
        if record is None or record.state is CallState.ENDED:
            return None
        controller = self._controllers.get(record.provider)
        return None if controller is None else (record, controller)

    async def update_provider_status(self, call_id: str, provider_status: str) -> None:
        """A provider's status callback: note it; end calls that never reached media."""
        record = await self.coordinator.update_call(call_id, {"provider_status": provider_status})
        if record is None:
            log.warning(
                "status %r for an unknown call", provider_status, extra={"call_id": call_id}
            )
            return
        final = PROVIDER_FINAL_STATUS.get(provider_status)
        if final is None or record.state is not CallState.CREATED:
            return  # still ringing, or the bridge owns the ending
        await self._end_unbridged(record, *final)

    async def _end_unbridged(
        self, record: CallRecord, status: CallStatus, error: str | None
    ) -> None:
        if record.state is CallState.ENDED:
            return
        record.set_status(status, error)
        if record.state is not CallState.ENDING:
            record.advance(CallState.ENDING)
        record.advance(CallState.ENDED)
        await self._record_end(record, Conversation())

    async def _control_loop(self) -> None:
        async for call_id, message in self.coordinator.control_messages(self.worker_id):
            live = self.manager.get(call_id)
            if not isinstance(live, CallBridge):
                continue
            try:
                if message.get("action") == "hangup":
                    live.finish(CallStatus.API_ENDED)
                elif message.get("action") == "transfer":
                    await live.transfer(str(message.get("destination", "")))
            except Exception:
                log.exception("control message %r failed", message, extra={"call_id": call_id})

    async def _heartbeat_loop(self) -> None:
        while True:
            info = {"active_calls": self.manager.active, "accepting": self.manager.accepting}
            with contextlib.suppress(Exception):
                await self.coordinator.heartbeat(self.worker_id, info, ttl=HEARTBEAT_S * 3)
            await asyncio.sleep(HEARTBEAT_S)
