"""Calls of this worker: create, run, control from anywhere, and hand over to webhooks.

The legs call :meth:`CallService.create` when the network announces a call
(a webhook, a registration) and :meth:`CallService.run` once its media is
here. Everything another worker may need goes through the Coordinator: the
record, the media owner, the agent's concurrency slot, control messages
(hang-up / transfer from whichever worker the API request landed on), and
the durable queue of end-of-call webhooks.

:class:`CallService` takes calls in and runs them, and takes over live calls
another worker lost or moved (:mod:`.migration`); its other jobs live in
:mod:`.service_core` (records and ends), :mod:`.control` (control from any
worker) and :mod:`.upkeep` (heartbeat, leases, reapers).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from telephony_edge import metrics, tracing
from telephony_edge.agent.link import AgentLink
from telephony_edge.agent.pool import PoolChoice
from telephony_edge.amd.policy import Voicemail, voicemail_policy
from telephony_edge.calls import admission, carrier_ids, migration
from telephony_edge.calls.bridge import CallBridge, CallOver
from telephony_edge.calls.bridge_hooks import CallHooks
from telephony_edge.calls.control import RemoteControl
from telephony_edge.calls.dispatcher import RetryPolicy, WebhookDispatcher
from telephony_edge.calls.leg import Leg
from telephony_edge.calls.prefetch import prefetch
from telephony_edge.calls.record import CallRecord, CallState, new_id
from telephony_edge.calls.refusals import CallRejected, KnownCallConflict, WorkerFull, unavailable
from telephony_edge.calls.upkeep import Upkeep, supervise
from telephony_edge.calls.variables import call_variables, fill_placeholders, merge_agent_config
from telephony_edge.coord.base import Conflict
from telephony_edge.coord.health import CoordinatorUnavailable
from telephony_edge.recording.recorder import CallRecording, Continued, recording_options
from telephony_edge.routing import Route

log = logging.getLogger(__name__)

#: what a coordinator raises that is an answer, not an outage
_ANSWERS = (Conflict, LookupError, ValueError, CoordinatorUnavailable)


def count_webhook(kind: str, outcome: str) -> None:
    metrics.WEBHOOK_RESULTS.labels(kind=kind, outcome=outcome).inc()


class CallService(RemoteControl, Upkeep):
    """The calls of one worker."""

    # -- background work ---------------------------------------------------

    async def start(self) -> None:
        """Start the control loop, the webhook dispatcher and the heartbeat (app start-up)."""
        hooks = self.settings.webhooks
        self._dispatcher = WebhookDispatcher(
            self.coordinator,
            self._http(),
            secret=hooks.signing_secret,
            retry=RetryPolicy(
                max_attempts=hooks.max_attempts,
                base_delay=hooks.backoff_base_s,
                max_delay=hooks.backoff_max_s,
            ),
            on_result=count_webhook,
            allow_private_targets=hooks.allow_private_targets,
        )
        dispatcher = self._dispatcher
        loops: dict[str, Callable[[], Awaitable[None]]] = {
            "control-loop": self._control_loop,
            "webhook-dispatcher": dispatcher.run,
            "heartbeat": self._heartbeat_loop,
            "setup-reaper": self._reap_loop,
            "lease-reaper": self._lease_reap_loop,
            "recording-sweep": self.recordings.sweep_loop,
            "live-state": functools.partial(self.live.run, self._live_sources),
            "webhook-outbox": functools.partial(self.outbox.sweep_loop, hooks.owed_sweep_s),
        }
        self._tasks = [
            asyncio.create_task(supervise(name, loop), name=name) for name, loop in loops.items()
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
        await self.recordings.close()
        with contextlib.suppress(Exception):
            await self.coordinator.forget_worker(self.worker_id)

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
        call_id: str | None = None,
    ) -> CallRecord:
        """Record a call the network announced; raise CallRejected if the edge won't take it."""
        self._check_admission()
        if agent_id not in self.settings.agents:
            raise CallRejected(404, f"unknown agent_id {agent_id!r}")
        try:
            recording_options(agent_config or {})
        except ValueError as exc:
            raise CallRejected(400, str(exc)) from None
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
        if session_id:  # a continued session keeps its id, so its next end updates the store
            record.session_id = session_id
        if call_id is not None:
            record.call_id = call_id
        record.traceparent = tracing.current_traceparent()  # the announcing request's span
        try:
            self.voicemail(record)
        except ValueError as exc:
            raise CallRejected(400, f"agent_config.voicemail: {exc}") from None
        # a call whose media never arrives is ended by the setup reaper; the ttl is a safety net
        try:
            if direction == "outbound":
                async with self._coordinated("reserve_slot"):
                    reserved = await self._reserve_slot(record)
                if not reserved:
                    limit = self.settings.agents[agent_id].max_concurrent_calls
                    raise CallRejected(
                        429, f"agent {agent_id!r} is at its limit of {limit} concurrent calls"
                    )
            async with self._coordinated("create_call"):
                await self.coordinator.create_call(
                    record.call_id, record.to_dict(), ttl=self.settings.calls.setup_ttl_s * 4
                )
        except CoordinatorUnavailable:
            raise unavailable() from None
        log.info(
            "call created",
            extra={"call_id": record.call_id, "provider": provider, "direction": direction},
        )
        return record

    async def _reserve_slot(self, record: CallRecord) -> bool:
        """An outbound call takes its agent slot before the phone rings, not at media:
        over the limit, nobody is rung only to be hung up on. The slot lasts the set-up
        (the setup reaper's end, or a failed dial's, gives it back; media renews it)."""
        limit = self.settings.agents[record.agent_id].max_concurrent_calls
        if limit and not await self.coordinator.acquire_agent_slot(
            record.agent_id, record.call_id, limit, ttl=self.settings.calls.setup_ttl_s
        ):
            metrics.CALLS_REFUSED.labels(reason="agent_limit").inc()
            return False
        return True

    async def create_inbound(
        self,
        route: Route,
        *,
        from_: str,
        provider_call_id: str,
        facts: dict[str, str] | None = None,
    ) -> CallRecord:
        """Record an inbound call to one of the edge's numbers, as its route says.

        The network's call id maps to one call for as long as its record lives
        (``carrier_ids``): a webhook retried or replayed finds the call the
        first one created, in whatever state; one naming the same id with
        another caller, number or ``facts`` raises :class:`KnownCallConflict`.
        """
        # before anything is stored: a call redirected to another worker must find nothing here
        self._check_admission()
        call_id = new_id("call")
        if provider_call_id:
            carrier = carrier_ids.CarrierCall(
                route.provider,
                provider_call_id,
                {"from": from_, "to": route.number, **(facts or {})},
            )
            ttl = carrier_ids.mapping_ttl(self.settings.calls)
            try:
                async with self._coordinated("register_pending"):
                    claim = await carrier_ids.claim(self.coordinator, carrier, call_id, ttl)
            except CoordinatorUnavailable:
                raise unavailable() from None
            if claim.differing is not None:
                raise KnownCallConflict(claim.call_id, claim.differing)
            if not claim.first:
                record = await self.get(claim.call_id) if claim.call_id else None
                if record is None:
                    raise CallRejected(409, "this call is being set up by another request")
                return record
        return await self.create(
            call_id=call_id,
            agent_id=route.agent_id,
            provider=route.provider,
            direction="inbound",
            from_=from_,
            to=route.number,
            agent_config=route.agent_config,
            region=route.region_name,
            provider_call_id=provider_call_id,
        )

    def voicemail(self, record: CallRecord) -> Voicemail | None:
        """The call's answering-machine setting if detection applies (ValueError: invalid)."""
        stored = self.settings.agents[record.agent_id].model_dump(mode="json", exclude_none=True)
        return voicemail_policy(merge_agent_config(stored, record.agent_config), record.direction)

    def _check_admission(self) -> None:
        """Raise WorkerFull (counted) if this worker is at its maximum or draining."""
        full = admission.full_reason(
            self.manager.active, self.settings.server.max_calls, self.manager.accepting
        )
        if full is not None:
            reason = "full" if self.manager.accepting else "draining"
            metrics.CALLS_REFUSED.labels(reason=reason).inc()
            raise WorkerFull(full)

    async def get(self, call_id: str) -> CallRecord | None:
        live = self.manager.get(call_id)
        doc = await self.coordinator.get_call(call_id)
        if isinstance(live, CallBridge) and not live.handed_off:
            # the owner's live record lacks what other writers merged meanwhile (a
            # provider's status callback): the same answer on every worker
            if doc is not None:
                live.record.merge_foreign(doc.data)
            return live.record
        return None if doc is None else CallRecord.from_dict(doc.data)

    async def announce_break(self, call_id: str) -> migration.Break | None:
        """The network says the call's media left its worker (see :mod:`.migration`); None
        when the call is not to be resumed: over, or ending on this very worker."""
        live = self.manager.get(call_id)
        if isinstance(live, CallBridge) and live.ending_here:
            return None
        return await migration.announce_break(self.coordinator, call_id)

    async def take_over(
        self, call_id: str, generation: int
    ) -> tuple[CallRecord, migration.Resumption]:
        """Make this worker the owner of a live call whose media came back to the edge here.

        Raises :class:`CallRejected` (503) while draining, :class:`CallOver` when
        the call is over or another worker took it over first (see
        :mod:`.migration`). The call's former bridge on this worker, if its stream
        came back here, lets go first.
        """
        if not self.manager.accepting:
            raise CallRejected(503, "this worker is draining and takes no calls over")
        await migration.let_go(self.manager, call_id, within_s=migration.HAND_OFF_WAIT_S)
        key = migration.break_key(call_id, generation)
        try:
            async with self._coordinated("take_over"):
                noted = await self.coordinator.peek_pending(key)
                doc = await self.coordinator.take_over(
                    call_id, self.worker_id, generation=generation, ttl=self._lease_s
                )
                live = await self.coordinator.get_live(call_id) if doc is not None else None
        except Conflict as exc:
            raise CallOver(f"the call is over or was taken over: {exc}") from None
        except CoordinatorUnavailable:
            raise unavailable() from None
        if doc is None:
            raise CallOver("the call is not stored")
        record = CallRecord.from_dict(doc.data)
        brk = (
            migration.Break(**noted)
            if noted
            else migration.Break(call_id, None, migration.CRASH, time.time(), generation)
        )
        log.info(
            "call taken over from %s (%s)", brk.from_worker, brk.cause, extra={"call_id": call_id}
        )
        return record, migration.resumption(record, brk, live)

    async def run(
        self, record: CallRecord, leg: Leg, resumed: migration.Resumption | None = None
    ) -> CallRecord:
        """Bridge ``leg`` to an agent core until the call ends; return the final record.

        However ``run`` ends, including its task being cancelled, the call
        ends exactly once (see :class:`CallBridge`), or goes on on another
        worker. ``resumed``: the call was taken over (:meth:`take_over`).
        """
        record.from_ = record.from_ or leg.info.from_
        record.to = record.to or leg.info.to
        record.provider_call_id = record.provider_call_id or leg.info.provider_call_id
        record.owner = self.worker_id
        region = record.region or None
        endpoints = None
        if region is not None and self.pool.has(region):
            endpoints = PoolChoice(self.pool, self.pool.candidates(region))
        url = endpoints.urls[0] if endpoints else self._agent_url(record)
        link = AgentLink(
            self._http(), url, self._timeouts, call_id=record.call_id, endpoints=endpoints
        )
        # a resumed call whose machine detection decided before the move does not detect again
        voicemail = None if resumed is not None and record.amd else self.voicemail(record)
        network = self.networks.get(record.provider)
        by_network = network is not None and network.network_amd and record.direction == "outbound"
        # a moved call's recording goes on here in a part of its own (recording/joiner.py)
        recording = self._start_recording(record, resumed)
        tap = None if recording is None else recording.writer
        hooks: CallHooks = self
        if resumed is not None:
            hooks = migration.ResumedHooks(self, resumed, record.provider)
            record.state = CallState.CONNECTING  # its live part starts again here
            chat, calls = resumed.conversation.chat, resumed.conversation.function_calls
            self.live.adopt(record.call_id, len(chat), len(calls))
        bridge = CallBridge(
            record,
            leg,
            link,
            self.pacer,
            hooks,
            self._limits,
            voicemail,
            not by_network,
            recorder=tap,
            conversation=None if resumed is None else resumed.conversation,
            resumed=resumed is not None,
            elapsed_s=0.0 if resumed is None else resumed.elapsed_s,
        )
        self.manager.add(bridge)
        active = metrics.CALLS_ACTIVE.labels(provider=record.provider)
        active.inc()
        try:
            await bridge.run()
        finally:
            active.dec()
            self.manager.discard(record.call_id)
            self.live.forget(record.call_id)
            if recording is not None and record.state in (CallState.CONNECTING, CallState.ACTIVE):
                await self.recordings.let_go(record.call_id)  # it goes on elsewhere: a part
            elif recording is not None:  # a call that ended without a webhook to wait for it
                await self.recordings.finish(record.call_id, keep=True)
        return record

    def _live_sources(self) -> list[CallBridge]:
        """The calls whose network can bring them back to the edge: their live state is kept."""
        return [
            call
            for call in self.manager.live_calls()
            if isinstance(call, CallBridge) and call.leg.resumable
        ]

    async def can_move(self) -> bool:
        """Whether another worker behind this one's public URL takes calls now (its heartbeat):
        where a network can bring the calls this worker lets go."""
        try:
            workers = await self.coordinator.live_workers()
        except Exception as exc:
            self.health.failed("live_workers", exc)
            return False
        return migration.ready_elsewhere(workers, self.worker_id, self.settings.public_url)

    async def move_calls(self, cause: str = migration.DRAIN) -> int:
        """Hand this worker's movable calls to the others (a drain), if one is ready."""
        if not await self.can_move():
            log.info("no other worker behind this URL takes calls: live calls stay until they end")
            return 0
        return await migration.hand_off_all(self.manager, cause, within_s=migration.HAND_OFF_WAIT_S)

    def _start_recording(
        self, record: CallRecord, resumed: migration.Resumption | None
    ) -> CallRecording | None:
        """Record the call from its first frame if its agent's settings (and the call's) say so;
        a call taken over, in its next part, after those its live state lists."""
        stored = self.settings.agents[record.agent_id].model_dump(mode="json", exclude_none=True)
        try:
            options = recording_options(merge_agent_config(stored, record.agent_config))
        except ValueError as exc:  # checked at create: a record from elsewhere
            log.warning("call not recorded: %s", exc, extra={"call_id": record.call_id})
            return None
        continued = None
        if resumed is not None:
            live = resumed.live.doc.get("recording") if resumed.live is not None else None
            continued = Continued(record.generation, live, resumed.elapsed_s)
        return (
            None if options is None else self.recordings.start(record.call_id, options, continued)
        )

    async def begin(self, record: CallRecord) -> str | None:
        """Move the call out of ``created`` (compare-and-set), then admit it here.

        A call that ended meanwhile (the caller hung up, its setup time ran
        out) is not revived: :class:`CallOver`. The lease is taken first, so a record
        any worker sees ``connecting`` or ``active`` has an owner until that
        owner stops renewing it (and is then reaped: :meth:`reap_lost`).
        """
        call_id = record.call_id
        if not await self.coordinator.claim_owner(call_id, self.worker_id, ttl=self._lease_s):
            raise CallOver("another worker already holds this call's media")
        record.advance(CallState.CONNECTING)
        try:
            await self.write_state(record, (CallState.CREATED,))
        except (Conflict, LookupError) as exc:
            await self.coordinator.release_owner(call_id, self.worker_id)
            raise CallOver(f"media for a call that is over: {exc}") from None
        except CoordinatorUnavailable as exc:
            metrics.CALLS_REFUSED.labels(reason="coordinator").inc()
            return str(exc)
        try:
            return await self._admit(record)
        except _ANSWERS:
            raise
        except Exception as exc:
            metrics.CALLS_REFUSED.labels(reason="coordinator").inc()
            return str(self.health.failed("admit", exc))

    async def admit_resumed(self, record: CallRecord) -> str | None:
        """Admit a call taken over (:meth:`take_over` did the rest of ``begin``)."""
        try:
            return await self._admit(record)
        except _ANSWERS:
            raise
        except Exception as exc:
            metrics.CALLS_REFUSED.labels(reason="coordinator").inc()
            return str(self.health.failed("admit", exc))

    async def _admit(self, record: CallRecord) -> str | None:
        if not self.manager.accepting:
            return "this worker is draining and takes no new calls"
        agent = self.settings.agents.get(record.agent_id)
        limit = agent.max_concurrent_calls if agent else None
        # the slot expires with the lease: both are renewed together (renew_leases)
        if limit and not await self.coordinator.acquire_agent_slot(
            record.agent_id, record.call_id, limit, ttl=self._lease_s
        ):
            return f"agent {record.agent_id!r} is at its limit of {limit} concurrent calls"
        return None

    async def _continuation(self, session_id: str, call_id: str) -> dict[str, Any]:
        """The ``session_continuation`` of ``initiate``: empty fields if nothing is kept."""
        stored: dict[str, Any] | None = None
        try:
            stored = await self.coordinator.get_session(session_id)
        except Exception:  # the call goes on without its history
            log.exception("session continuation not loaded", extra={"call_id": call_id})
        if stored is None:
            log.info(
                "session %s: nothing stored to continue", session_id, extra={"call_id": call_id}
            )
        found = stored or {}
        return {
            "session_id": session_id,
            "found": stored is not None,
            "metadata": found.get("metadata") or {},
            "chat": found.get("chat") or [],
            "agent_config": found.get("agent_config") or {},
        }

    def _agent_url(self, record: CallRecord) -> str:
        url = self.router.agent_core_url(record.region or None) or self.demo_agent_url
        if url is None:
            raise RuntimeError("no agent core configured and the built-in one is not running")
        return url

    async def session_chat(self, record: CallRecord) -> list[dict[str, Any]]:
        """The chat of the session's earlier calls, for a call that continued one (else [])."""
        if not record.session_continuation:
            return []
        found = await self._continuation(record.session_continuation, record.call_id)
        return list(found["chat"])

    async def prepare(self, record: CallRecord, *, final: bool = False) -> dict[str, Any]:
        """Merge the agent config, run the prefetch webhook, fill variables: the initiate data.

        ``final``: the record's agent config and metadata are final already (a call
        resumed after it went active): nothing is merged, fetched or filled again.
        """
        stored = self.settings.agents[record.agent_id].model_dump(mode="json", exclude_none=True)
        config = record.agent_config if final else merge_agent_config(stored, record.agent_config)
        extra_prompt = ""
        spec = None if final else config.get("extra_prompt_webhook")
        if spec:
            result = await prefetch(
                self._http(),
                spec,
                session_id=record.session_id,
                agent_id=record.agent_id,
                from_=record.from_,
                to=record.to,
                metadata=record.metadata,
                call_id=record.call_id,
                on_result=count_webhook,
                secret=self.settings.webhooks.signing_secret,
                allow_private_targets=self.settings.webhooks.allow_private_targets,
            )
            record.metadata = result.merged_metadata(record.metadata)
            extra_prompt = result.extra_prompt
        if not final:
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
        if record.session_continuation and not final:
            initiate["session_continuation"] = await self._continuation(
                record.session_continuation, record.call_id
            )
        if extra_prompt:
            initiate["extra_prompt"] = extra_prompt
        return initiate
