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
import dataclasses
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, Protocol

import aiohttp

from telephony_edge import metrics
from telephony_edge.agent.link import AgentLink, LinkTimeouts
from telephony_edge.agent.pool import AgentCorePool, PoolChoice
from telephony_edge.amd.policy import Voicemail, voicemail_policy
from telephony_edge.calls import admission, carrier_ids, webhooks
from telephony_edge.calls.bridge import BridgeLimits, CallBridge, CallOver, Conversation
from telephony_edge.calls.dispatcher import RetryPolicy, WebhookDispatcher
from telephony_edge.calls.leg import Leg, NotSupported
from telephony_edge.calls.machine import ENDED_FROM, AmdReport
from telephony_edge.calls.manager import CallManager
from telephony_edge.calls.outbox import Outbox
from telephony_edge.calls.pacing import Pacer
from telephony_edge.calls.prefetch import prefetch
from telephony_edge.calls.reaper import REAP_BATCH, WorkerAbsence
from telephony_edge.calls.record import CallRecord, CallState, CallStatus, new_id
from telephony_edge.calls.variables import call_variables, fill_placeholders, merge_agent_config
from telephony_edge.config import Settings
from telephony_edge.coord.base import DEFAULT_REPLY_TTL, OWED_FIELD, Conflict, Coordinator
from telephony_edge.coord.health import CoordinatorHealth, CoordinatorUnavailable
from telephony_edge.recording.recorder import CallRecording, Recordings, recording_options
from telephony_edge.routing import NumberRouter, Route

log = logging.getLogger(__name__)

HEARTBEAT_S = 5.0
#: heartbeat retry while the coordinator is down, so recovery is noticed within a second
HEARTBEAT_RETRY_S = 1.0
MAX_DEFERRED_ENDS = 10_000  # calls ended during an outage, kept until it is over
#: what a coordinator raises that is an answer, not an outage
_ANSWERS = (Conflict, LookupError, ValueError, CoordinatorUnavailable)
SUPERVISOR_MAX_BACKOFF_S = 30.0
#: fields the media owner writes; others (``provider_status``, ``provider_details``)
#: belong to other writers (``CallRecord.merge_foreign``)
OWNER_FIELDS = (
    "state",
    "call_status",
    "error_message",
    "answered_at",
    "ended_at",
    "transferred_to",
    "agent_config",
    "metadata",
    "owner",
    "from_",
    "to",
    "provider_call_id",
    "media_stats",
    "amd",
)
_LIVE_STATES = (CallState.CONNECTING, CallState.ACTIVE)
#: How long a hang-up / transfer request on one worker waits for the owner's answer.
CONTROL_REPLY_S = 3.0
#: ``error_message`` of a call whose worker stopped renewing its lease (killed, cut off).
WORKER_LOST = "the worker handling the call was lost"


def _count_webhook(kind: str, outcome: str) -> None:
    metrics.WEBHOOK_RESULTS.labels(kind=kind, outcome=outcome).inc()


class CallRejected(Exception):
    """The edge will not take this call; ``http_status`` says how an API answers."""

    def __init__(self, http_status: int, reason: str) -> None:
        super().__init__(reason)
        self.http_status = http_status
        self.reason = reason


class ControlFailed(Exception):
    """A hang-up or transfer for a call on another worker did not happen.

    ``http_status`` says how an API answers: 409 when the owner's lease had
    lapsed (the call is reaped on the spot), 504 when the owner did not
    answer in time.
    """

    def __init__(self, http_status: int, reason: str) -> None:
        super().__init__(reason)
        self.http_status = http_status
        self.reason = reason


class WorkerFull(CallRejected):
    """This worker is at its maximum or draining; another worker may take the call."""

    def __init__(self, reason: str) -> None:
        super().__init__(503, reason)


class KnownCallConflict(CallRejected):
    """A request names a known call with other facts: a forgery under a reused signature."""

    def __init__(self, call_id: str, fact: str) -> None:
        super().__init__(403, f"a known call's {fact} differs from its first webhook")
        self.call_id = call_id
        self.fact = fact


def _unavailable() -> CallRejected:
    """The refusal of a new call while the coordinator does not answer (counted)."""
    metrics.CALLS_REFUSED.labels(reason="coordinator").inc()
    return CallRejected(
        503, "call state storage (coordinator) is unreachable; no new calls until it is back"
    )


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


class Network(Protocol):
    """What the call service needs of a provider (``telephony_edge.provider.Provider``)."""

    @property
    def network_amd(self) -> bool: ...

    def final_status(self, provider_status: str) -> tuple[CallStatus, str | None] | None: ...

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
        #: provider name → its network; filled by the application from the registry
        self.networks: dict[str, Network] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._control_tasks: set[asyncio.Task[None]] = set()
        calls = settings.calls
        self._lease_s = calls.lease_s
        self._lease_renew_s = calls.lease_renew_s
        self._limits = BridgeLimits(
            max_duration_s=calls.max_duration_s,
            inactivity_timeout_s=calls.inactivity_timeout_s,
            preconnect_buffer_s=calls.preconnect_buffer_s,
            max_chat_messages=calls.max_chat_messages,
            max_function_calls=calls.max_function_calls,
        )
        core = settings.agent_core
        self._timeouts = LinkTimeouts(
            connect_s=core.connect_timeout_s,
            ready_s=core.ready_timeout_s,
            ping_interval_s=core.ping_interval_s,
            heartbeat_s=core.heartbeat_s,
            max_early_messages=core.max_early_messages,
        )
        self._rates = webhooks.CostRates(**settings.costs.model_dump())
        self.health = CoordinatorHealth()
        #: which workers' heartbeats the lease reaper has seen absent, and since when
        self._absence = WorkerAbsence()
        self._absence_epoch: float | None = None  # health.recovered_at it counts from
        self._store_checked = False  # durability_warnings logged (once the store answered)
        #: calls whose end met a coordinator outage: (record, conversation) until written
        self._deferred_ends: dict[str, tuple[CallRecord, Conversation]] = {}
        self.pool = AgentCorePool.from_regions(
            {name: region.agent_core_urls for name, region in settings.regions.items()},
            max_failures=core.max_failures,
            bench_s=core.bench_s,
        )
        self._dispatcher: WebhookDispatcher | None = None
        self.outbox = Outbox(
            coordinator,
            webhooks.SESSION_WEBHOOK_QUEUE,
            grace_s=settings.webhooks.owed_grace_s,
        )
        self.recordings = Recordings(
            settings.recording,
            public_url=settings.public_url,
            secret=settings.webhooks.signing_secret,
        )

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
            on_result=_count_webhook,
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
            raise _unavailable() from None
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
                raise _unavailable() from None
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

    async def report_amd(self, call_id: str, report: AmdReport) -> bool:
        """A network's answering-machine detection result, to the call's owner; False if none."""
        live = self.manager.get(call_id)
        if isinstance(live, CallBridge):
            live.report_amd(report)
            return True
        doc = await self.coordinator.get_call(call_id)
        if doc is None or doc.data.get("state") not in _LIVE_STATES:
            log.warning("amd result for a call without media: dropped", extra={"call_id": call_id})
            return False
        return await self.coordinator.publish_control(
            call_id, {"action": "amd", "report": dataclasses.asdict(report)}
        )

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
        if isinstance(live, CallBridge):
            # the owner's live record lacks what other writers merged meanwhile (a
            # provider's status callback): the same answer on every worker
            if doc is not None:
                live.record.merge_foreign(doc.data)
            return live.record
        return None if doc is None else CallRecord.from_dict(doc.data)

    async def run(self, record: CallRecord, leg: Leg) -> CallRecord:
        """Bridge ``leg`` to an agent core until the call ends; return the final record.

        However ``run`` ends, including its task being cancelled, the call
        ends exactly once (see :class:`CallBridge`).
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
        voicemail = self.voicemail(record)
        network = self.networks.get(record.provider)
        by_network = network is not None and network.network_amd and record.direction == "outbound"
        recording = self._start_recording(record)
        tap = None if recording is None else recording.writer
        bridge = CallBridge(
            record,
            leg,
            link,
            self.pacer,
            self,
            self._limits,
            voicemail,
            not by_network,
            recorder=tap,
        )
        self.manager.add(bridge)
        active = metrics.CALLS_ACTIVE.labels(provider=record.provider)
        active.inc()
        try:
            await bridge.run()
        finally:
            active.dec()
            self.manager.discard(record.call_id)
            if recording is not None:  # a call that ended without a webhook to wait for it
                await self.recordings.finish(record.call_id, keep=True)
        return record

    def _start_recording(self, record: CallRecord) -> CallRecording | None:
        """Record the call from its first frame if its agent's settings (and the call's) say so."""
        stored = self.settings.agents[record.agent_id].model_dump(mode="json", exclude_none=True)
        try:
            options = recording_options(merge_agent_config(stored, record.agent_config))
        except ValueError as exc:  # checked at create: a record from elsewhere
            log.warning("call not recorded: %s", exc, extra={"call_id": record.call_id})
            return None
        return None if options is None else self.recordings.start(record.call_id, options)

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

    # -- the bridge's hooks (CallHooks) -------------------------------------

    async def write_state(
        self,
        record: CallRecord,
        previous: tuple[CallState, ...],
        *,
        if_unowned: bool = False,
        conversation: Conversation | None = None,
    ) -> None:
        """Write the owner's fields of ``record`` with a compare-and-set on its state.

        Raises :class:`Conflict` if the stored state is not one of ``previous``
        (or, with ``if_unowned``, some worker holds the call's lease) and
        LookupError if the record is gone. Fields other writers own (the
        provider status) are merged back into ``record``, never overwritten.
        Writing ``ended`` with the call's ``conversation`` writes, in the same
        step, the end-of-call webhook it owes (:mod:`telephony_edge.calls.outbox`).
        Writing ``ended`` drops this worker's lease, after the write: a live
        record without an owner would look like a dead worker's to a reaper.
        """
        data = record.to_dict()
        changes = {name: data[name] for name in OWNER_FIELDS}
        owed_at = None
        if record.state is CallState.ENDED and conversation is not None:
            job = self._webhook_job(record, conversation)
            if job is not None:
                changes[OWED_FIELD], owed_at = job, time.time()
        try:
            async with self._defer_if_away(record), self._coordinated("write_state"):
                doc = await self.coordinator.update_call(
                    record.call_id,
                    changes,
                    if_state=[str(s) for s in previous],
                    if_unowned=if_unowned,
                    owed_at=owed_at,
                )
        finally:
            if record.state is CallState.ENDED and not if_unowned:
                try:
                    await self.coordinator.release_owner(record.call_id, self.worker_id)
                except Exception as exc:  # the lease lapses by itself
                    log.warning("lease not released: %r", exc, extra={"call_id": record.call_id})
        if doc is None:
            raise LookupError(f"call {record.call_id} is not stored (expired?)")
        record.merge_foreign(doc.data)

    async def release(self, record: CallRecord) -> None:
        """Give the agent slot back; the lease goes with the final write (``write_state``)."""
        await self.coordinator.release_agent_slot(record.agent_id, record.call_id)

    async def finished(
        self, record: CallRecord, conversation: Conversation, *, written: bool = True
    ) -> None:
        # finished on every end; kept for a deferred report, else taken for this one
        recording = await self.recordings.finish(record.call_id, keep=not written)
        if not written:
            deferred = self._deferred_ends.get(record.call_id)
            if deferred is not None:  # the coordinator was away: reported once it is back
                self._deferred_ends[record.call_id] = (deferred[0], conversation)
            return  # else another worker (or a status callback) ended the call first
        status = record.call_status or CallStatus.ERROR
        metrics.CALLS_TOTAL.labels(provider=record.provider, status=str(status)).inc()
        await self._keep_session(record, conversation, self._agent_config(record))
        job = self._webhook_job(record, conversation, recording)
        if job is not None:
            await self.outbox.send(record.call_id, job)

    def _agent_config(self, record: CallRecord) -> dict[str, Any]:
        """The call's agent config: before media the record holds only the call's overrides,
        and the stored agent's keys (its end-of-call webhook among them) apply under them."""
        stored = self.settings.agents[record.agent_id].model_dump(mode="json", exclude_none=True)
        return merge_agent_config(stored, record.agent_config)

    def _webhook_job(
        self,
        record: CallRecord,
        conversation: Conversation,
        recording: Mapping[str, Any] | None = None,
    ) -> dict[str, Any] | None:
        """The end-of-call webhook's queue job, or None when the agent has none (or its spec
        is invalid: a config error, logged)."""
        spec = self._agent_config(record).get("session_data_webhook")
        if not spec:
            return None
        payload = webhooks.build_session_payload(
            record,
            transcript=conversation.chat,
            function_calls=conversation.function_calls,
            chars_used=conversation.chars_used,
            rates=self._rates,
            truncated=conversation.truncated,
            recording=recording,
        )
        try:
            return webhooks.session_webhook_job(spec, payload)
        except ValueError as exc:
            log.error("session webhook not queued: %s", exc, extra={"call_id": record.call_id})
            return None

    @contextlib.asynccontextmanager
    async def _defer_if_away(self, record: CallRecord) -> AsyncIterator[None]:
        """A final write that meets an outage: keep the end here, to write and report later."""
        try:
            yield
        except CoordinatorUnavailable:
            if record.state is CallState.ENDED:
                self._defer_end(record)
            raise

    def _defer_end(self, record: CallRecord) -> None:
        if record.call_id in self._deferred_ends:
            return
        if len(self._deferred_ends) >= MAX_DEFERRED_ENDS:
            oldest = next(iter(self._deferred_ends))
            del self._deferred_ends[oldest]
            log.error(
                "too many ends waiting for the coordinator; dropped", extra={"call_id": oldest}
            )
        self._deferred_ends[record.call_id] = (record, Conversation())
        log.warning(
            "call ended while the coordinator is away; it is recorded once it is back",
            extra={"call_id": record.call_id},
        )

    async def flush_deferred_ends(self) -> int:
        """Write and report the ends that met an outage; return how many were done.

        A record that another worker ended meanwhile (its reaper) or that the
        store lost is dropped: that end was reported, or cannot be.
        """
        done = 0
        for call_id, (record, conversation) in list(self._deferred_ends.items()):
            try:
                await self.write_state(record, ENDED_FROM, conversation=conversation)
            except CoordinatorUnavailable:
                return done  # still away: the next heartbeat tries again
            except (Conflict, LookupError) as exc:
                log.warning("deferred end dropped: %s", exc, extra={"call_id": call_id})
                self._deferred_ends.pop(call_id, None)
                continue
            self._deferred_ends.pop(call_id, None)
            await self.finished(record, conversation)
            done += 1
        return done

    async def _keep_session(
        self, record: CallRecord, conversation: Conversation, agent_config: dict[str, Any]
    ) -> None:
        """Store what a later call of this session needs (item: session continuation).

        The chat is the session's whole conversation: what was stored for it
        before (the calls it continued) followed by this call's, the latest
        ``calls.max_chat_messages`` kept. A call that said nothing (never
        reached media) leaves an existing session as it is. Concurrent calls
        of one session: the last to end wins. Never fails the call's end.
        """
        try:
            stored = await self.coordinator.get_session(record.session_id)
            if stored is not None and not conversation.chat:
                return
            earlier = stored.get("chat") if stored is not None else None
            chat = [*(earlier if isinstance(earlier, list) else []), *conversation.chat]
            session = {
                "session_id": record.session_id,
                "call_id": record.call_id,
                "metadata": record.metadata,
                "chat": chat[-self.settings.calls.max_chat_messages :],
                "agent_config": webhooks.without_webhook_headers(agent_config),
            }
            await self.coordinator.put_session(
                record.session_id, session, self.settings.calls.session_ttl_s
            )
        except Exception:
            log.exception("session continuation not stored", extra={"call_id": record.call_id})

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

    @contextlib.asynccontextmanager
    async def _coordinated(self, op: str) -> AsyncIterator[None]:
        """Run coordinator steps: an outage is counted and raised as CoordinatorUnavailable.

        New calls turn it into a refusal (503 / TwiML), live calls into a log
        line; answers (a conflict, a missing record) pass through unchanged.
        """
        try:
            yield
        except CoordinatorUnavailable:
            raise
        except (Conflict, LookupError, ValueError):
            self.health.ok()
            raise
        except Exception as exc:
            raise self.health.failed(op, exc) from exc
        self.health.ok()

    async def other_ready_worker(self) -> str | None:
        """The public URL of another worker taking calls now, or None (also when unknown)."""
        try:
            workers = await self.coordinator.live_workers()
        except Exception as exc:
            self.health.failed("live_workers", exc)
            return None
        return admission.other_ready_worker(
            workers,
            self_id=self.worker_id,
            own_url=self.settings.public_url,
            region=self.settings.server.region,
        )

    def _heartbeat_info(self) -> dict[str, Any]:
        return admission.worker_info(
            public_url=self.settings.public_url,
            region=self.settings.server.region,
            active_calls=self.manager.active,
            max_calls=self.settings.server.max_calls,
            accepting=self.manager.accepting,
        )

    def _agent_url(self, record: CallRecord) -> str:
        url = self.router.agent_core_url(record.region or None) or self.demo_agent_url
        if url is None:
            raise RuntimeError("no agent core configured and the built-in one is not running")
        return url

    async def prepare(self, record: CallRecord) -> dict[str, Any]:
        """Merge the agent config, run the prefetch webhook, fill variables: the initiate data."""
        stored = self.settings.agents[record.agent_id].model_dump(mode="json", exclude_none=True)
        config = merge_agent_config(stored, record.agent_config)
        extra_prompt = ""
        spec = config.get("extra_prompt_webhook")
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
            initiate["session_continuation"] = await self._continuation(
                record.session_continuation, record.call_id
            )
        if extra_prompt:
            initiate["extra_prompt"] = extra_prompt
        return initiate

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
        if doc is not None and doc.data.get("state") in _LIVE_STATES:
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
        if doc is not None and doc.data.get("state") in _LIVE_STATES:
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
            if not isinstance(live, CallBridge):
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

    async def _unbridged(self, call_id: str) -> tuple[CallRecord, Network] | None:
        """A call with no media on any worker yet (ringing), and its provider's network."""
        doc = await self.coordinator.get_call(call_id)
        if doc is None or doc.data.get("state") != CallState.CREATED:
            return None
        record = CallRecord.from_dict(doc.data)
        network = self.networks.get(record.provider)
        return None if network is None else (record, network)

    async def update_provider_status(self, call_id: str, provider_status: str) -> None:
        """A provider's status callback: merge it; end a call that never reached media.

        The merge touches ``provider_status`` alone, so a callback during the
        owner's teardown changes nothing else; and only a call still in
        ``created`` is ended here (compare-and-set), so the owner of a bridged
        call keeps the say over how it ended and its one webhook.
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
            await self._end_stored(record, *final)

    async def fail_setup(self, call_id: str, error: str) -> bool:
        """The network could not bring the call's media here: end it ``error``, once.

        Only a call still waiting for its media (``created``) is ended; a call
        whose media arrived ends through its leg. Returns whether it was ended.
        """
        doc = await self.coordinator.get_call(call_id)
        if doc is None:
            return False
        return await self._end_stored(CallRecord.from_dict(doc.data), CallStatus.ERROR, error)

    async def _end_stored(
        self, record: CallRecord, status: CallStatus, error: str | None, *, lost: bool = False
    ) -> bool:
        """End a call no bridge of ours runs, once, from the record as stored.

        A call that never reached media ends by compare-and-set from
        ``created``; with ``lost``, a bridged call whose owner's lease lapsed
        ends from ``connecting``/``active``, and only while nobody holds the
        lease (one atomic step, so exactly one worker wins and an owner that
        renews in time keeps its call). The winner frees the agent slot and
        queues the end-of-call webhook through :meth:`finished`, as a bridge does.
        """
        previous = _LIVE_STATES if lost else (CallState.CREATED,)
        if record.state not in previous:
            return False
        record.set_status(status, error)
        record.advance(CallState.ENDING)
        record.advance(CallState.ENDED)
        try:
            await self.write_state(record, previous, if_unowned=lost, conversation=Conversation())
        except (Conflict, LookupError):
            return False  # media arrived, the owner is alive, or another worker ended it first
        (log.warning if lost else log.info)(
            "call ended by this worker: %s",
            error or "before its media arrived",
            extra={"call_id": record.call_id, "call_status": str(status)},
        )
        try:
            await self.coordinator.release_agent_slot(record.agent_id, record.call_id)
        finally:
            await self.finished(record, Conversation())
        return True

    async def reap_unconnected(self) -> int:
        """End calls whose media has not arrived within ``calls.setup_ttl_s``; return how many.

        Reads only the calls created that long ago and still ``created``
        (:meth:`Coordinator.aged_calls`), in batches, yielding between them.
        """
        ttl = self.settings.calls.setup_ttl_s
        ended = 0
        cursor: str | None = None
        while True:
            ids, cursor = await self.coordinator.aged_calls(
                str(CallState.CREATED), ttl, limit=REAP_BATCH, after=cursor
            )
            for call_id in ids:
                doc = await self.coordinator.get_call(call_id)
                if doc is not None and await self._end_stored(
                    CallRecord.from_dict(doc.data),
                    CallStatus.ERROR,
                    f"the call's media never arrived within {ttl:g}s",
                ):
                    ended += 1
            if cursor is None:
                return ended
            await asyncio.sleep(0)  # a batch at a time: the event loop is never held long

    async def _reap_loop(self) -> None:
        interval = min(30.0, max(0.05, self.settings.calls.setup_ttl_s / 4))
        while True:
            await asyncio.sleep(interval)
            with contextlib.suppress(CoordinatorUnavailable):  # counted; the next pass retries
                async with self._coordinated("reap"):
                    await self.reap_unconnected()

    async def reap_lost(self) -> int:
        """End bridged calls whose owner's lease lapsed (its worker died); return how many.

        Runs on every worker, under the rules of :mod:`telephony_edge.calls.reaper`:
        only calls whose lease lapsed ``lease_s`` ago (the leases index, not the
        live calls), whose holder's heartbeat this worker has seen absent for
        ``lease_s``, not bridged here, and not in the ``lease_s +
        lease_renew_s`` after the coordinator came back. The compare-and-set
        guarded by the lease's absence (``_end_stored(lost=True)``) makes
        exactly one worker end each.
        """
        now = time.monotonic()
        recovered = self.health.recovered_at
        if not self.health.up or (
            recovered is not None and now - recovered < self._lease_s + self._lease_renew_s
        ):
            self._absence.reset()
            return 0
        if recovered != self._absence_epoch:  # an outage since absence was last counted
            self._absence.reset()
            self._absence_epoch = recovered
        self._absence.observe(await self.coordinator.live_workers(), now)
        ours = {b.call_id for b in self.manager.live_calls() if isinstance(b, CallBridge)}
        ended = 0
        cursor: str | None = None
        while True:
            lapsed, cursor = await self.coordinator.lapsed_leases(
                self._lease_s, limit=REAP_BATCH, after=cursor
            )
            for lease in lapsed:
                call_id = lease.call_id
                if (
                    lease.state not in _LIVE_STATES
                    or call_id in ours
                    or call_id in self._deferred_ends  # ours, ended in an outage: flushed later
                ):
                    continue
                holder = None if lease.holder == self.worker_id else lease.holder
                if holder is not None and self._absence.absent_for(holder, now) < self._lease_s:
                    continue  # its worker answered lately: it re-claims or ends it itself
                doc = await self.coordinator.get_call(call_id)
                if doc is not None and await self._end_stored(
                    CallRecord.from_dict(doc.data), CallStatus.ERROR, WORKER_LOST, lost=True
                ):
                    ended += 1
            if cursor is None:
                return ended
            await asyncio.sleep(0)  # a batch at a time: the event loop is never held long

    async def _lease_reap_loop(self) -> None:
        while True:
            await asyncio.sleep(self._lease_renew_s)
            with contextlib.suppress(CoordinatorUnavailable):  # counted; the next pass retries
                async with self._coordinated("reap"):
                    await self.reap_lost()

    async def renew_leases(self) -> None:
        """Renew the leases (and slots) of all our calls in one coordinator step.

        A call whose lease was lost (this worker was cut off longer than the
        lease) is taken back if nobody reaped it meanwhile; one that was
        reaped is ended here too (its record is over: the write conflicts, so
        no second webhook) rather than going on as a call nobody knows. A
        call whose record vanished (Redis restarted empty, or evicted it) is
        still live here: its record is written again from memory (:meth:`_restore`).
        """
        bridges = [b for b in self.manager.live_calls() if isinstance(b, CallBridge)]
        held = {b.call_id: b.record.agent_id for b in bridges if b.state in _LIVE_STATES}
        if not held:
            return
        renewed = await self.coordinator.renew_leases(self.worker_id, held, self._lease_s)
        for bridge in bridges:
            call_id = bridge.call_id
            if call_id not in held or call_id in renewed:
                continue
            log.warning("the lease on this call lapsed", extra={"call_id": call_id})
            taken = await self.coordinator.claim_owner(call_id, self.worker_id, ttl=self._lease_s)
            doc = await self.coordinator.get_call(call_id)
            if taken and doc is None:
                await self._restore(bridge.record)
            elif not taken or doc is None or doc.data.get("state") not in _LIVE_STATES:
                await bridge.end("the call was ended elsewhere after this worker lost its lease")

    async def _restore(self, record: CallRecord) -> None:
        """Write a live call's record (with the mapping of its network's id, and its agent
        slot) again after the coordinator lost them.

        The lease is taken before this, so no reaper sees the record unowned.
        A slot the agent's limit no longer has room for (calls admitted while
        the store was empty) is not taken, but the live call goes on.
        """
        await self.coordinator.create_call(record.call_id, record.to_dict())
        carrier = carrier_ids.of_record(record)
        if carrier is not None:  # a replay of its webhook must find this call, not make one
            ttl = carrier_ids.mapping_ttl(self.settings.calls)
            await carrier_ids.claim(self.coordinator, carrier, record.call_id, ttl)
        metrics.CALL_RECORDS_RESTORED.inc()
        log.warning(
            "call record restored: the coordinator had lost it", extra={"call_id": record.call_id}
        )
        agent = self.settings.agents.get(record.agent_id)
        limit = agent.max_concurrent_calls if agent else None
        if limit and not await self.coordinator.acquire_agent_slot(
            record.agent_id, record.call_id, limit, ttl=self._lease_s
        ):
            log.warning(
                "agent slot not restored: the agent is at its limit",
                extra={"call_id": record.call_id},
            )

    async def _control_loop(self) -> None:
        async for call_id, message in self.coordinator.control_messages(self.worker_id):
            # each in a task: a slow transfer never holds up a hang-up behind it
            task = asyncio.create_task(self._obey(call_id, message), name=f"control-{call_id}")
            self._control_tasks.add(task)
            task.add_done_callback(self._control_tasks.discard)

    async def _heartbeat_loop(self) -> None:
        """Announce this worker (load, URL, accepting), learn self-registered agent cores,
        renew this worker's leases.

        Never fails on an outage: it counts it and retries every second, so the
        worker notices by itself when the coordinator answers again.
        """
        interval = min(HEARTBEAT_S, self._lease_renew_s)
        while True:
            try:
                await self.coordinator.heartbeat(
                    self.worker_id, self._heartbeat_info(), ttl=max(self._lease_s, 2 * interval)
                )
                self.pool.update_registered(await self.coordinator.live_workers())
            except Exception as exc:
                self.health.failed("heartbeat", exc)
                await self.coordinator.ping()  # (Redis: also drops stale pooled connections)
                await asyncio.sleep(HEARTBEAT_RETRY_S)
                continue
            self.health.ok()
            await self._check_store()
            try:
                await self.flush_deferred_ends()
                await self.renew_leases()
            except Exception as exc:  # the coordinator is away: the next beat tries again
                log.warning("leases not renewed: %s", exc)
            await asyncio.sleep(interval)

    async def _check_store(self) -> None:
        """Warn once, when the coordinator first answers, of a setting that can lose state."""
        if self._store_checked:
            return
        try:
            warnings = await self.coordinator.durability_warnings()
        except self.coordinator.unavailable:
            return  # the next beat asks again
        except Exception as exc:  # e.g. INFO refused by a managed service's ACL
            warnings = [f"the coordinator's configuration could not be read: {exc}"]
        self._store_checked = True
        for warning in warnings:
            log.warning("coordination store: %s", warning)


async def supervise(name: str, loop: Callable[[], Awaitable[None]]) -> None:
    """Run a worker's background loop: if it fails, log, count and restart it with backoff.

    A loop that returns has finished its work (the webhook dispatcher after a
    drain); cancellation stops it (application shutdown).
    """
    delay = 0.5
    while True:
        started = time.monotonic()
        try:
            await loop()
            return
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("background loop %s failed; restarting", name)
        metrics.LOOP_RESTARTS.labels(loop=name).inc()
        if time.monotonic() - started > SUPERVISOR_MAX_BACKOFF_S:
            delay = 0.5  # it ran for a while: a fresh failure, not a crash loop
        await asyncio.sleep(delay)
        delay = min(delay * 2, SUPERVISOR_MAX_BACKOFF_S)
