"""Seeing a SIP worker die within a second, and taking its calls over.

Theory of operation
-------------------
Twilio, Vonage and WebRTC bring a call back to the edge by themselves when
the worker carrying it dies (its sockets close). A SIP caller does not: its
RTP goes into the void and its phone waits. So with ``sip.dialog_proxy`` the
SIP workers watch each other through the coordinator:

* every :data:`BEAT_S` each worker announces itself alive for
  :data:`ALIVE_S` (a heartbeat under its own id with :data:`PREFIX`, holding
  the beat's time; apart from the worker's main heartbeat, whose ttl is the
  lease's 15 s) and reads who else is (``live_workers``): two coordinator
  steps per beat;
* a worker seen alive at one beat and gone at the next is dead: its absence
  shows within :data:`ALIVE_S` + :data:`BEAT_S` of its last beat;
* each survivor then pages the dead worker's live SIP calls
  (``page_active_calls``: ``owner`` and ``provider``; a rare event, so one
  read of the calls) and asks its resumer to take each over
  (:meth:`~telephony_edge.sip.resumer.Resumer.resume`) at the generation it
  read, so a call another survivor took meanwhile is left alone. The calls
  are spread by rendezvous hashing over the survivors: the first choice for a
  call tries at once, the others after :data:`BACKUP_AFTER_S` (in case the
  first choice died too, or failed); the takeover is one step, so exactly one
  wins either way.

A worker cut off from the coordinator for a second looks dead: its calls
are taken over and it lets them go when its lease renewal finds them taken
(``hand_off("superseded")``: the dialog forgotten without a BYE). That costs
the caller a short gap, never the call.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Collection
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from telephony_edge.sip.resumer import Resumer

log = logging.getLogger(__name__)

PREFIX = "sip-alive:"  # the id of a SIP worker's liveness beat: PREFIX + its worker id
BEAT_S = 0.25
ALIVE_S = 0.75  # a worker silent this long (three beats) is dead
BACKUP_AFTER_S = 1.0
PAGE = 100


def first_choice(survivors: Collection[str], call_id: str) -> str:
    """The survivor that takes ``call_id`` over first (rendezvous hashing: each call's
    choice moves only when that survivor goes)."""

    def weight(worker: str) -> bytes:
        return hashlib.sha256(f"{worker}|{call_id}".encode()).digest()

    return max(survivors, key=weight)


class Liveness:
    """This worker's beat and its watch over the other SIP workers (module docstring)."""

    def __init__(self, resumer: Resumer, worker_id: str) -> None:
        self.resumer = resumer
        self.worker_id = worker_id
        self._seen: dict[str, float] = {}  # worker → its latest beat we read (Unix time)

    @property
    def coordinator(self) -> Any:
        return self.resumer.endpoint.services.coordinator

    async def run(self) -> None:
        """Beat and watch until cancelled; an outage skips beats, never the loop."""
        while True:
            try:
                await self.beat()
            except Exception as exc:  # the coordinator away: nothing is known meanwhile
                log.warning("SIP liveness beat failed: %r", exc)
                self._seen = {}  # a gap in what we saw is no death
            await asyncio.sleep(BEAT_S)

    async def beat(self) -> list[str]:
        """One beat: announce, read the others, take over the calls of the dead; who died."""
        now = time.time()
        await self.coordinator.heartbeat(PREFIX + self.worker_id, {"at": now}, ttl=ALIVE_S)
        workers = await self.coordinator.live_workers()
        alive = {
            w.removeprefix(PREFIX): float(info.get("at") or now)
            for w, info in workers.items()
            if w.startswith(PREFIX)
        }
        dead = sorted(set(self._seen) - set(alive))
        survivors = frozenset({*alive, self.worker_id})
        for worker in dead:
            log.warning("SIP worker %s stopped beating: taking its calls over", worker)
            calls = self._take_calls_of(worker, survivors, self._seen[worker])
            self.resumer.endpoint._spawn(calls)
        self._seen = alive
        return dead

    async def _take_calls_of(self, dead: str, survivors: frozenset[str], lost_at: float) -> None:
        """Resume the dead worker's live SIP calls (``lost_at``: its last beat we read; the
        move's gap counts from there, at most a beat early)."""
        calls: list[tuple[str, int]] = []
        after: str | None = None
        try:
            while True:
                page, after = await self.coordinator.page_active_calls(
                    where={"owner": dead, "provider": "sip"},
                    fields=("generation",),
                    after=after,
                    limit=PAGE,
                )
                calls += [(call_id, int(doc.data.get("generation") or 0)) for call_id, doc in page]
                if after is None:
                    break
        except Exception as exc:  # its calls end with their leases, webhooks with the chat
            log.warning("calls of SIP worker %s not read: %r", dead, exc)
            return
        mine = [c for c in calls if first_choice(survivors, c[0]) == self.worker_id]
        backup = [c for c in calls if c not in mine]
        await asyncio.gather(*(self._resume(c, gen, lost_at) for c, gen in mine))
        if backup:
            await asyncio.sleep(BACKUP_AFTER_S)
            await asyncio.gather(*(self._resume(c, gen, lost_at) for c, gen in backup))

    async def _resume(self, call_id: str, generation: int, lost_at: float) -> None:
        try:
            await self.resumer.resume(call_id, generation, lost_at)
        except Exception:
            log.exception("SIP call not taken over", extra={"call_id": call_id})
