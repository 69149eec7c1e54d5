"""The end-of-call webhook as a transactional outbox: written with the end, never lost.

Theory of operation
-------------------
A call's end and the webhook that reports it used to be two steps: the record
was written ``ended``, and the job was queued only after the recording had
finished uploading (up to a minute). A worker killed in between (the kubelet's
SIGKILL after the grace period), a Redis error at enqueue or a lost reply left
an ended call that nobody ever reported. Now:

1. The final write of a call (``ended``) carries the webhook's job (URL,
   headers, the body as it would be sent without the recording) in the
   record's ``webhook_owed`` field, and files the call in its bucket's *owed*
   index, in the same atomic step (:meth:`Coordinator.update_call`,
   ``owed_at``). From then on the end cannot exist without the debt.
2. The worker that ended the call queues the full job (with the recording,
   once its upload is done) and then settles the debt (:meth:`Outbox.send`).
   The queue takes a job once per call id (its ``once`` marker lives a week),
   so queuing again after a crash is harmless.
3. Every worker sweeps the owed index (:meth:`Outbox.sweep`): a debt older than
   ``grace_s`` (longer than a recording upload may take) belongs to a worker
   that died or lost Redis on the way; its stored job is queued and settled.
   Two sweepers racing queue it once: the queue's ``once`` marker decides.

A receiver therefore gets the webhook once, or (a crash between a delivery and
its acknowledgement, the queue's at-least-once) again with the same
``Idempotency-Key``: the call id. A job that keeps failing goes to the dead
letters after ``webhooks.max_attempts`` (the dispatcher's rule).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from telephony_edge import failpoints
from telephony_edge.coord.base import Coordinator
from telephony_edge.coord.health import CoordinatorUnavailable

log = logging.getLogger(__name__)

SWEEP_BATCH = 100  # debts settled per sweep at most: the next pass takes the rest


class Outbox:
    """Queues owed end-of-call webhooks and settles them; see the module docstring."""

    def __init__(
        self,
        coordinator: Coordinator,
        queue: str,
        *,
        grace_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.coordinator = coordinator
        self.queue = queue
        self.grace_s = grace_s
        self._clock = clock

    async def send(self, call_id: str, job: Mapping[str, Any]) -> bool:
        """Queue ``job`` (once per call id) and settle the call's debt. Returns whether this
        call queued it; a failure leaves the debt for a sweeper and is only logged."""
        try:
            queued = await self.coordinator.enqueue(self.queue, call_id, dict(job))
            failpoints.hit("outbox.queued")
            await self.coordinator.settle_owed(call_id)
        except Exception as exc:  # the debt stays filed: a sweep queues it
            log.warning(
                "end-of-call webhook not queued yet (%s); a sweep will queue it",
                exc,
                extra={"call_id": call_id},
            )
            return False
        log.info(
            "session webhook %s",
            "queued" if queued else "already queued",
            extra={"call_id": call_id},
        )
        return queued

    async def sweep(self) -> int:
        """Queue the webhooks owed for longer than ``grace_s``; return how many this queued."""
        owed = await self.coordinator.owed_calls(self._clock() - self.grace_s, SWEEP_BATCH)
        queued = 0
        for call_id, job in owed:
            if not isinstance(job, dict):
                log.error("malformed owed webhook dropped", extra={"call_id": call_id})
                await self.coordinator.settle_owed(call_id)
                continue
            if await self.send(call_id, job):
                queued += 1
                log.warning(
                    "end-of-call webhook queued by the sweep: the worker that ended the call "
                    "did not (it died, or lost the coordinator)",
                    extra={"call_id": call_id},
                )
        return queued

    async def sweep_loop(self, interval_s: float) -> None:
        """Sweep every ``interval_s``; an unavailable coordinator waits for the next pass."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.sweep()
            except CoordinatorUnavailable:
                continue
