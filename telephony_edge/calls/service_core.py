"""The call service's state, and a call's record written and its end reported.

:class:`ServiceCore` writes the owner's fields of a record (compare-and-set on
its state), ends a call no bridge runs (:meth:`ServiceCore._end_stored`), keeps
the session for a later continuation, and queues the end-of-call webhook. An
end that meets a coordinator outage is kept here and written once it is back.
The control (:mod:`.control`) and upkeep (:mod:`.upkeep`) parts of
:class:`~telephony_edge.calls.service.CallService` build on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import aiohttp

from telephony_edge import metrics
from telephony_edge.agent.link import LinkTimeouts
from telephony_edge.agent.pool import AgentCorePool
from telephony_edge.calls import webhooks
from telephony_edge.calls.bridge_hooks import BridgeLimits, Conversation
from telephony_edge.calls.dispatcher import WebhookDispatcher
from telephony_edge.calls.live_state import TTL_MARGIN_S, LiveSnapshot, LiveStates
from telephony_edge.calls.machine import ENDED_FROM
from telephony_edge.calls.manager import CallManager
from telephony_edge.calls.outbox import Outbox
from telephony_edge.calls.pacing import Pacer
from telephony_edge.calls.reaper import WorkerAbsence
from telephony_edge.calls.record import CallRecord, CallState, CallStatus
from telephony_edge.calls.refusals import Network
from telephony_edge.calls.variables import merge_agent_config
from telephony_edge.config import Settings
from telephony_edge.coord.base import OWED_FIELD, Conflict, Coordinator
from telephony_edge.coord.health import CoordinatorHealth, CoordinatorUnavailable
from telephony_edge.recording.recorder import Recordings
from telephony_edge.routing import NumberRouter

log = logging.getLogger(__name__)

MAX_DEFERRED_ENDS = 10_000  # calls ended during an outage, kept until it is over
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
    "migrations",
)
LIVE_STATES = (CallState.CONNECTING, CallState.ACTIVE)
#: ``error_message`` of a call whose worker stopped renewing its lease (killed, cut off).
WORKER_LOST = "the worker handling the call was lost"


class ServiceCore:
    """See the module docstring."""

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
            worker_id=worker_id,
        )
        self.live = LiveStates(
            coordinator,
            worker_id,
            ttl_s=calls.max_duration_s + TTL_MARGIN_S,
            interval_s=calls.live_state_interval_s,
            recording=self.recordings.live_state,
        )

    def resumable(self, provider: str) -> bool:
        """Whether the provider's network brings a live call back to the edge after its
        worker is lost (then its live state is kept: :mod:`.live_state`)."""
        network = self.networks.get(provider)
        return network is not None and network.resumable

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
        The write is fenced on the record's owner (this worker, or none yet), but
        for ``if_unowned`` (a reaper's): a call another worker took over is its.
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
                    if_owner=None if if_unowned else self.worker_id,
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

    async def save_live(self, call_id: str, snapshot: LiveSnapshot, cause: str) -> None:
        """Write a call's live state now, as it is handed off (a failure: logged, the
        worker that takes it over resumes from the last periodic write)."""
        try:
            await self.live.save(call_id, snapshot, cause)
        except Exception as exc:
            log.warning("live state not saved at the hand-off: %r", exc, extra={"call_id": call_id})

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
        if self.resumable(record.provider):  # over: nothing to resume from any more
            with contextlib.suppress(Exception):  # it expires anyway
                await self.coordinator.drop_live(record.call_id)
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
            job = webhooks.session_webhook_job(spec, payload)
        except ValueError as exc:
            log.error("session webhook not queued: %s", exc, extra={"call_id": record.call_id})
            return None
        if record.traceparent:  # its delivery's span joins the call's trace, on any worker
            job["traceparent"] = record.traceparent
        return job

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

    async def _end_stored(
        self,
        record: CallRecord,
        status: CallStatus,
        error: str | None,
        *,
        lost: bool = False,
        conversation: Conversation | None = None,
    ) -> bool:
        """End a call no bridge of ours runs, once, from the record as stored.

        A call that never reached media ends by compare-and-set from
        ``created``; with ``lost``, a bridged call whose owner's lease lapsed
        ends from ``connecting``/``active``, and only while nobody holds the
        lease (one atomic step, so exactly one worker wins and an owner that
        renews in time keeps its call). The winner frees the agent slot and
        queues the end-of-call webhook through :meth:`finished`, as a bridge does,
        with ``conversation`` (a lost call's, from its live state) if given.
        """
        previous = LIVE_STATES if lost else (CallState.CREATED,)
        if record.state not in previous:
            return False
        record.set_status(status, error)
        record.advance(CallState.ENDING)
        record.advance(CallState.ENDED)
        said = conversation or Conversation()
        try:
            await self.write_state(record, previous, if_unowned=lost, conversation=said)
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
            await self.finished(record, said)
        return True
