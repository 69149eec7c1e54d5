"""Failpoints: named places where a test makes this process die as a crash would (SIGKILL).

A crash-safety claim ("a worker killed at any step of a call's end loses no
webhook") needs the crash at each step, not wherever a timer happens to land.
``EDGE_FAILPOINTS=teardown.WriteState,outbox.queued`` in the
environment arms those names; :func:`hit` at an armed name kills the process
with SIGKILL on the spot (no clean-up, no log flush: what the kubelet does after
the grace period). Unarmed, a hit is one lookup in an empty frozenset. The
names are listed where they are hit (``grep failpoints.hit``).
"""

from __future__ import annotations

import os
import signal
import sys

ENV = "EDGE_FAILPOINTS"
_ARMED = frozenset(name for name in os.environ.get(ENV, "").split(",") if name)


def hit(name: str) -> None:
    """Die here if ``name`` is armed."""
    if name in _ARMED:
        print(f"failpoint {name}: SIGKILL", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
