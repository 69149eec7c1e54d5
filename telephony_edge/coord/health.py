"""Whether the coordinator answers, as this worker last saw it.

Why: while Redis is down, a live call must go on (its audio never touches
the coordinator) but new calls must be refused clearly and at once, the
outage must be visible (``telephony_edge_coordinator_up`` and
``telephony_edge_coordinator_errors_total{op}``), and recovery must need
nobody: the next operation that succeeds marks the coordinator up again.
"""

from __future__ import annotations

import logging
import time

from telephony_edge import metrics

log = logging.getLogger(__name__)


class CoordinatorUnavailable(Exception):
    """A coordinator operation failed for want of the backend (not a conflict or a miss)."""

    def __init__(self, op: str, cause: BaseException) -> None:
        super().__init__(f"coordination store unreachable during {op}: {type(cause).__name__}")
        self.op = op


class CoordinatorHealth:
    """Up or down, from the outcome of the latest operations; logs each change once."""

    def __init__(self) -> None:
        self.up = True
        #: when (``time.monotonic()``) it last came back: what it said of leases
        #: just after may be empty or stale until owners have renewed
        self.recovered_at: float | None = None
        metrics.COORDINATOR_UP.set(1)

    def ok(self) -> None:
        if not self.up:
            log.warning("coordinator answers again")
            self.recovered_at = time.monotonic()
        self.up = True
        metrics.COORDINATOR_UP.set(1)

    def failed(self, op: str, exc: BaseException) -> CoordinatorUnavailable:
        """Count a failed ``op``; the exception to raise to the caller."""
        metrics.COORDINATOR_ERRORS.labels(op=op).inc()
        if self.up:
            log.warning("coordinator unreachable (%s): %s: %s", op, type(exc).__name__, exc)
        self.up = False
        metrics.COORDINATOR_UP.set(0)
        return CoordinatorUnavailable(op, exc)
