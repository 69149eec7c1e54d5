"""A worker's background upkeep: the heartbeat, lease renewal (and a lost record written
again), and the reapers of calls whose media never came or whose worker died."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from telephony_edge import metrics
from telephony_edge.calls import admission, carrier_ids, migration
from telephony_edge.calls.bridge import CallBridge
from telephony_edge.calls.reaper import REAP_BATCH
from telephony_edge.calls.record import CallRecord, CallState, CallStatus
from telephony_edge.calls.service_core import LIVE_STATES, WORKER_LOST, ServiceCore
from telephony_edge.coord.health import CoordinatorUnavailable

log = logging.getLogger(__name__)

HEARTBEAT_S = 5.0
#: heartbeat retry while the coordinator is down, so recovery is noticed within a second
HEARTBEAT_RETRY_S = 1.0
SUPERVISOR_MAX_BACKOFF_S = 30.0


class Upkeep(ServiceCore):
    """See the module docstring."""

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
                    lease.state not in LIVE_STATES
                    or call_id in ours
                    or call_id in self._deferred_ends  # ours, ended in an outage: flushed later
                ):
                    continue
                holder = None if lease.holder == self.worker_id else lease.holder
                if holder is not None and self._absence.absent_for(holder, now) < self._lease_s:
                    continue  # its worker answered lately: it re-claims or ends it itself
                doc = await self.coordinator.get_call(call_id)
                if doc is None:
                    continue
                record = CallRecord.from_dict(doc.data)
                said = None  # what the call said before it was lost, kept for its webhook
                if self.resumable(record.provider):
                    said = migration.conversation_of(await self.coordinator.get_live(call_id))
                if await self._end_stored(
                    record, CallStatus.ERROR, WORKER_LOST, lost=True, conversation=said
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
        held = {b.call_id: b.record.agent_id for b in bridges if b.state in LIVE_STATES}
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
            moved = doc is not None and doc.data.get("owner") not in (None, self.worker_id)
            if moved and not taken:  # another worker took it over: it goes on there
                bridge.hand_off("superseded")
            elif taken and doc is None:
                await self._restore(bridge.record)
            elif not taken or doc is None or doc.data.get("state") not in LIVE_STATES:
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
