"""Ending the calls nobody runs any more: what the reapers may read, and when they may reap.

Theory of operation
-------------------
Two reapers run on every worker (the call service's loops):

* ``reap_unconnected`` ends calls whose media never arrived within
  ``calls.setup_ttl_s``. It reads :meth:`Coordinator.aged_calls`: the calls
  created that long ago and still ``created``, which each call passes
  through about once in its life.
* ``reap_lost`` ends bridged calls whose owner stopped renewing its lease
  (its worker died or was cut off). It reads
  :meth:`Coordinator.lapsed_leases`: the leases that expired at least
  ``lease_s`` ago and were never released, oldest first.

Neither reads the live calls: a pass costs what changed (calls created,
leases lapsed), not what is live, and it works in batches of
:data:`REAP_BATCH` with a yield to the event loop between them, so a pass
never holds the loop for long whatever a dead worker left behind.

When a lapsed lease may be reaped (the rules)
---------------------------------------------
All of these, else the call is left for a later pass:

1. The coordinator is up, and came back (if it was away) more than
   ``lease_s + lease_renew_s`` ago: a Redis restarted empty or stalled past
   the lease shows live owners' leases as lapsed until they renew them.
2. The lease lapsed at least ``lease_s`` ago (the coordinator's clock).
3. This worker does not bridge the call (its renewal takes the lease back)
   and does not hold its end for writing (ended during an outage).
4. The worker that held the lease has been *absent* (no heartbeat) for at
   least ``lease_s``, as this worker saw in reads that succeeded
   (:class:`WorkerAbsence`): an owner whose heartbeat still arrives is
   alive and re-claims its calls on its next renewal. A call whose holder
   is this worker (which does not bridge it) or unknown counts as absent.

The end itself is one compare-and-set guarded by the lease's absence
(``update_call(if_unowned=True)``), so among all workers exactly one wins.
"""

from __future__ import annotations

from collections.abc import Collection

#: Calls read per coordinator step of a reaper pass; the loop yields between steps.
REAP_BATCH = 200
#: A worker not seen for this long is forgotten by :class:`WorkerAbsence` (memory bound).
FORGET_AFTER_S = 3600.0


class WorkerAbsence:
    """For how long each worker has been absent, as seen while the coordinator answered.

    Fed by :meth:`observe` (the live workers, read successfully); :meth:`reset`
    on any outage, so absence is only ever counted over a stretch of reads that
    all succeeded. Times are this process's monotonic clock.
    """

    def __init__(self) -> None:
        self._since: float | None = None  # first successful read since the last reset
        self._live: set[str] = set()
        self._last_live: dict[str, float] = {}

    def reset(self) -> None:
        self._since = None
        self._live = set()

    def observe(self, live: Collection[str], now: float) -> None:
        if self._since is None:
            self._since = now
        self._live = set(live)
        for worker in self._live:
            self._last_live[worker] = now
        stale = [w for w, at in self._last_live.items() if now - at > FORGET_AFTER_S]
        for worker in stale:
            del self._last_live[worker]

    def absent_for(self, worker: str | None, now: float) -> float:
        """Seconds ``worker`` has been seen absent (0 if live, or nothing was observed)."""
        if self._since is None or worker in self._live:
            return 0.0
        last = self._since if worker is None else self._last_live.get(worker, self._since)
        return now - max(last, self._since)
