"""A live call's state in the coordinator: what another worker resumes the call from.

Theory of operation
-------------------
Each live call whose network can bring it back to the edge after its worker
is lost (``Network.resumable``: Twilio) has a *live state* in the coordinator
(:meth:`~telephony_edge.coord.base.Coordinator.put_live`):

* a small document, replaced whole: the network's identity of the call
  (Twilio: CallSid, streamSid), how much agent audio was sent and heard
  (``playback``), the conversation's counters, and on a deliberate move the
  ``moving`` marker (cause, from which worker, when);
* the chat and the function calls, appended entry by entry.

A recorded call's document also holds its recording's ``recording`` entry
(when it began, and each worker's part: its spool file and where it starts
on the call's timeline; :mod:`telephony_edge.recording.joiner`), which the
worker that ends the call joins into one recording. It changes only when
a worker starts a part (a takeover), never as the file grows, so it costs
no write of its own.

The agent config and the metadata the call runs with are in its record
already (written when it went ``active``), so they are not repeated here.

Writes are batched: :class:`LiveStates` wakes every ``interval_s`` (1 s by
default), asks each of this worker's calls for its snapshot (a few
attribute reads), keeps those that changed since their last write (a new
chat entry, audio played, a new document) and writes them all in one
coordinator step (Redis: one script per bucket, one round trip). A call
costs at most one write per interval, and none while nothing changes. A
worker that dies loses at most the last interval's changes. A write that
fails (Redis away) is not counted as made: the next one carries everything
since the last write that was. Only the call's owner's writes land (the
record's owner is checked in the same step), so a worker that lost a call
cannot overwrite its new owner's state.

A call handed off on purpose (drain) is saved at once, with its ``moving``
marker, before the network is told to move it (:meth:`LiveStates.save`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from telephony_edge import metrics
from telephony_edge.coord.base import Coordinator, LiveUpdate

log = logging.getLogger(__name__)

#: how long a live state outlives its last write beyond the longest call (``max_duration_s``)
TTL_MARGIN_S = 600.0


@dataclass(frozen=True, slots=True)
class LiveSnapshot:
    """A call's state now: its document, and its conversation's lists (which only grow)."""

    doc: dict[str, Any]
    chat: Sequence[dict[str, Any]]
    function_calls: Sequence[dict[str, Any]]


class LiveSource(Protocol):
    """A live call of this worker (the bridge)."""

    call_id: str

    def live_snapshot(self) -> LiveSnapshot | None:
        """The call's state now; None while it has none worth keeping (not live yet)."""


@dataclass(slots=True)
class _Written:
    """What the coordinator holds of one call: the last document and how many entries."""

    doc: dict[str, Any] | None = None
    chat: int = 0
    function_calls: int = 0


class LiveStates:
    """This worker's writer of its calls' live state (see the module docstring)."""

    def __init__(
        self,
        coordinator: Coordinator,
        worker_id: str,
        *,
        ttl_s: float,
        interval_s: float,
        recording: Callable[[str], dict[str, Any] | None] = lambda call_id: None,
    ) -> None:
        """``recording``: a call's recording entry (None: not recorded here)."""
        self.coordinator = coordinator
        self.worker_id = worker_id
        self.ttl_s = ttl_s
        self.interval_s = interval_s
        self._recording = recording
        self._written: dict[str, _Written] = {}

    def adopt(self, call_id: str, chat: int, function_calls: int) -> None:
        """A call taken over from another worker: so much of it is stored already."""
        self._written[call_id] = _Written(None, chat, function_calls)

    def forget(self, call_id: str) -> None:
        """The call left this worker (ended, or handed off)."""
        self._written.pop(call_id, None)

    def _update(self, call_id: str, snapshot: LiveSnapshot) -> LiveUpdate | None:
        """What changed since the call's last write (None: nothing)."""
        written = self._written.get(call_id) or _Written()
        chat = list(snapshot.chat[written.chat :])
        calls = list(snapshot.function_calls[written.function_calls :])
        doc = snapshot.doc
        recording = self._recording(call_id)
        if recording is not None:
            doc = {**doc, "recording": recording}
        if not chat and not calls and doc == written.doc:
            return None
        return LiveUpdate(doc, chat, calls)

    async def _write(self, updates: dict[str, LiveUpdate]) -> int:
        done = await self.coordinator.put_live(self.worker_id, updates, self.ttl_s)
        for call_id in done:
            update = updates[call_id]
            written = self._written.setdefault(call_id, _Written())
            written.doc = update.doc
            written.chat += len(update.chat)
            written.function_calls += len(update.function_calls)
        metrics.LIVE_STATE_WRITES.inc(len(done))
        return len(done)

    async def flush(self, sources: Iterable[LiveSource]) -> int:
        """Write every call whose state changed, in one step; return how many were written."""
        changed: dict[str, LiveUpdate] = {}
        for source in sources:
            snapshot = source.live_snapshot()
            if snapshot is None:
                continue
            update = self._update(source.call_id, snapshot)
            if update is not None:
                changed[source.call_id] = update
        return await self._write(changed) if changed else 0

    async def save(self, call_id: str, snapshot: LiveSnapshot, cause: str) -> bool:
        """Write one call now, marked as moving for ``cause`` (it is being handed off)."""
        moving = {"cause": cause, "from_worker": self.worker_id, "at": time.time()}
        marked = LiveSnapshot(
            {**snapshot.doc, "moving": moving}, snapshot.chat, snapshot.function_calls
        )
        update = self._update(call_id, marked)
        assert update is not None  # the marker is new
        return await self._write({call_id: update}) == 1

    async def run(self, sources: Callable[[], Iterable[LiveSource]]) -> None:
        """Flush every ``interval_s`` until cancelled; an outage skips a beat, never the loop."""
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.flush(sources())
            except self.coordinator.unavailable as exc:
                log.warning("live state not written (the next beat tries again): %r", exc)
