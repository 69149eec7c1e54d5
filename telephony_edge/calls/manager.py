"""The calls live on this worker: admission, counting and drain."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from typing import Protocol

TEARDOWN_WAIT_S = 10.0


class LiveCall(Protocol):
    call_id: str

    async def end(self, reason: str) -> None: ...


class CallManager:
    """Tracks live calls so readiness, drain and metrics agree on one number."""

    def __init__(self) -> None:
        self._calls: dict[str, LiveCall] = {}
        self._idle = asyncio.Event()
        self._idle.set()
        self._gone: dict[str, asyncio.Event] = {}  # calls someone waits to see leave
        self.accepting = True

    @property
    def active(self) -> int:
        return len(self._calls)

    def live_calls(self) -> list[LiveCall]:
        """This worker's calls now (a copy: safe to iterate while calls come and go)."""
        return list(self._calls.values())

    def get(self, call_id: str) -> LiveCall | None:
        return self._calls.get(call_id)

    def add(self, call: LiveCall) -> None:
        self._calls[call.call_id] = call
        self._idle.clear()

    def discard(self, call_id: str) -> None:
        self._calls.pop(call_id, None)
        gone = self._gone.pop(call_id, None)
        if gone is not None:
            gone.set()
        if not self._calls:
            self._idle.set()

    async def wait_gone(self, call_ids: Iterable[str], within_s: float) -> None:
        """Wait until none of ``call_ids`` is live here, at most ``within_s``."""
        waits = [
            self._gone.setdefault(call_id, asyncio.Event()).wait()
            for call_id in set(call_ids)
            if call_id in self._calls
        ]
        if waits:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*waits), within_s)

    async def drain(self, grace_s: float) -> int:
        """Stop admitting calls, wait up to ``grace_s`` for live ones to finish.

        Calls still live after the grace period are ended (``api-ended``).
        Returns how many had to be ended that way.
        """
        self.accepting = False
        try:
            await asyncio.wait_for(self._idle.wait(), grace_s)
            return 0
        except TimeoutError:
            remaining = list(self._calls.values())
            await asyncio.gather(*(c.end("worker drain grace period over") for c in remaining))
            # let their teardown finish (network hang-up, end-of-call webhook queued)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), TEARDOWN_WAIT_S)
            return len(remaining)
