"""In-memory Coordinator: the embedded default for a single process.

Every method runs without awaiting in between its reads and writes, so on
one event loop each is atomic, as the Redis scripts are. Values are kept as
JSON text, not objects, to behave like Redis (no aliasing, JSON-only data).
Expired entries are dropped lazily on access and swept from a deadline heap
on every write, so memory stays bounded by what is live.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import json
import time
from collections.abc import AsyncGenerator, Callable, Collection, Mapping
from typing import Any

from telephony_edge.coord.base import (
    DEFAULT_CONTROL_INBOX_SIZE,
    DEFAULT_DEAD_LETTER_MAX,
    DEFAULT_ENDED_CALL_TTL,
    DEFAULT_JOB_ONCE_TTL,
    DEFAULT_LEASE_TTL,
    DEFAULT_SLOT_TTL,
    ENDED_STATE,
    GENERATION_KEY,
    LIVE_STATES,
    OWED_FIELD,
    OWNER_KEY,
    STATE_KEY,
    Conflict,
    ControlMessage,
    Coordinator,
    DeadLetter,
    Document,
    Job,
    LapsedLease,
    LiveState,
    LiveUpdate,
    json_text,
)


class _ExpiringDict:
    """str → JSON text, each entry with an optional deadline on ``clock``."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._items: dict[str, tuple[str, float | None]] = {}
        self._deadlines: list[tuple[float, str]] = []

    def set(self, key: str, value: str, ttl: float | None) -> None:
        self.sweep()
        deadline = None if ttl is None else self._clock() + ttl
        self._items[key] = (value, deadline)
        if deadline is not None:
            heapq.heappush(self._deadlines, (deadline, key))

    def get(self, key: str) -> str | None:
        item = self._items.get(key)
        if item is None:
            return None
        value, deadline = item
        if deadline is not None and deadline <= self._clock():
            del self._items[key]
            return None
        return value

    def replace(self, key: str, value: str) -> None:
        """A new value under an existing key, its expiry kept."""
        item = self._items.get(key)
        if item is not None:
            self._items[key] = (value, item[1])

    def pop(self, key: str) -> str | None:
        value = self.get(key)
        self._items.pop(key, None)
        return value

    def live_keys(self) -> list[str]:
        self.sweep()
        return list(self._items)

    def sweep(self) -> None:
        now = self._clock()
        while self._deadlines and self._deadlines[0][0] <= now:
            deadline, key = heapq.heappop(self._deadlines)
            item = self._items.get(key)
            # The key may have been rewritten with a later deadline or none.
            if item is not None and item[1] == deadline:
                del self._items[key]


class _Queue:
    """One durable queue: jobs by id, and a heap of (due, seq, id) with lazy invalidation.

    ``seen`` marks every id ever enqueued (for the once-TTL); ``dead`` holds
    dead letters in the order they died: id -> (data JSON, attempts, reason, unix time).
    """

    def __init__(self, clock: Callable[[], float]) -> None:
        self.jobs: dict[str, tuple[str, int]] = {}  # id -> (data JSON, attempts)
        self.due: dict[str, float] = {}
        self.heap: list[tuple[float, int, str]] = []
        self.reserved: dict[str, float] = {}  # id -> when reserved, oldest first
        self.seen = _ExpiringDict(clock)
        self.dead: dict[str, tuple[str, int, str, float]] = {}
        self._seq = itertools.count()

    def schedule(self, job_id: str, at: float) -> None:
        self.due[job_id] = at
        heapq.heappush(self.heap, (at, next(self._seq), job_id))

    def pop_due(self, now: float) -> str | None:
        while self.heap and self.heap[0][0] <= now:
            at, _, job_id = heapq.heappop(self.heap)
            if self.due.get(job_id) == at:
                return job_id
        return None


class MemoryCoordinator(Coordinator):
    """All shared state in this process. Only correct for one worker."""

    def __init__(
        self,
        *,
        ended_call_ttl: float = DEFAULT_ENDED_CALL_TTL,
        control_inbox_size: int = DEFAULT_CONTROL_INBOX_SIZE,
        clock: Callable[[], float] = time.monotonic,
        job_once_ttl: float = DEFAULT_JOB_ONCE_TTL,
        dead_letter_max: int = DEFAULT_DEAD_LETTER_MAX,
    ) -> None:
        self._ended_call_ttl = ended_call_ttl
        self._job_once_ttl = job_once_ttl
        self._dead_max = dead_letter_max
        self._sessions = _ExpiringDict(clock)
        self._live = _ExpiringDict(clock)  # call id → JSON [doc, chat, function calls]
        self._inbox_size = control_inbox_size
        self._clock = clock
        self._calls = _ExpiringDict(clock)
        self._active: set[str] = set()
        self._created: dict[str, float] = {}  # call id → when created, until it moves on
        self._owed: dict[str, float] = {}  # call id → when its webhook became owed
        self._pending = _ExpiringDict(clock)
        self._routes = _ExpiringDict(clock)
        self._workers = _ExpiringDict(clock)
        self._owners = _ExpiringDict(clock)  # call id → JSON of the worker id
        #: the leases index: call id → (when its lease expires, its holder) until released
        self._leases: dict[str, tuple[float, str]] = {}
        self._replies = _ExpiringDict(clock)
        self._reply_waiters: dict[str, asyncio.Event] = {}
        self._inboxes: dict[str, asyncio.Queue[tuple[str, str]]] = {}
        self._slots: dict[str, dict[str, float]] = {}
        self._queues: dict[str, _Queue] = {}
        self._closed = False

    # -- lifecycle -----------------------------------------------------------

    async def ping(self) -> bool:
        return not self._closed

    async def close(self) -> None:
        self._closed = True

    # -- call records ------------------------------------------------------------

    def _store_call(self, call_id: str, doc: Document, ttl: float | None) -> None:
        if doc.data.get(STATE_KEY) == ENDED_STATE:
            self._active.discard(call_id)
            ttl = self._ended_call_ttl if ttl is None else ttl
        else:
            self._active.add(call_id)
        self._calls.set(call_id, json_text([doc.version, doc.data]), ttl)

    def _load_call(self, call_id: str) -> Document | None:
        stored = self._calls.get(call_id)
        if stored is None:
            return None
        version, data = json.loads(stored)
        return Document(data=data, version=version)

    async def create_call(
        self, call_id: str, data: Mapping[str, Any], *, ttl: float | None = None
    ) -> Document | None:
        if not isinstance(data.get(STATE_KEY), str):
            raise ValueError(f"a call record needs a string {STATE_KEY!r}")
        if self._calls.get(call_id) is not None:
            return None
        doc = Document(data=json.loads(json_text(dict(data))), version=1)
        self._store_call(call_id, doc, ttl)
        self._created[call_id] = self._clock()
        return self._load_call(call_id)

    async def update_call(
        self,
        call_id: str,
        changes: Mapping[str, Any],
        *,
        if_state: Collection[str] | None = None,
        if_version: int | None = None,
        ttl: float | None = None,
        if_unowned: bool = False,
        owed_at: float | None = None,
        if_owner: str | None = None,
    ) -> Document | None:
        current = self._load_call(call_id)
        if current is None:
            return None
        if (
            (if_state is not None and current.data.get(STATE_KEY) not in if_state)
            or (if_version is not None and current.version != if_version)
            or (if_unowned and self._owners.get(call_id) is not None)
            or (if_owner is not None and current.data.get(OWNER_KEY) not in (None, if_owner))
        ):
            raise Conflict(current)
        data = {**current.data, **json.loads(json_text(dict(changes)))}
        if not isinstance(data.get(STATE_KEY), str):
            raise ValueError(f"a call record needs a string {STATE_KEY!r}")
        self._store_call(call_id, Document(data=data, version=current.version + 1), ttl)
        if owed_at is not None:
            self._owed[call_id] = owed_at
        return self._load_call(call_id)

    async def owed_calls(self, older_than: float, limit: int = 100) -> list[tuple[str, Any]]:
        out: list[tuple[str, Any]] = []
        for call_id, at in sorted(self._owed.items(), key=lambda item: item[1]):
            if at >= older_than or len(out) >= limit:
                break
            doc = self._load_call(call_id)
            if doc is None or OWED_FIELD not in doc.data:
                del self._owed[call_id]  # expired, or settled by an older write
                continue
            out.append((call_id, doc.data[OWED_FIELD]))
        return out

    async def settle_owed(self, call_id: str) -> bool:
        owed = self._owed.pop(call_id, None) is not None
        doc = self._load_call(call_id)
        if doc is not None and OWED_FIELD in doc.data:
            data = {k: v for k, v in doc.data.items() if k != OWED_FIELD}
            self._calls.replace(call_id, json_text([doc.version, data]))
        return owed

    async def get_call(self, call_id: str) -> Document | None:
        return self._load_call(call_id)

    async def list_active_calls(self) -> list[Document]:
        docs = []
        for call_id in list(self._active):
            doc = self._load_call(call_id)
            if doc is None:  # expired while active (an explicit ttl)
                self._active.discard(call_id)
                continue
            docs.append(doc)
        return docs

    # -- pending registrations ------------------------------------------------------

    async def register_pending(self, key: str, payload: Mapping[str, Any], ttl: float) -> bool:
        if self._pending.get(key) is not None:
            return False
        self._pending.set(key, json_text(dict(payload)), ttl)
        return True

    async def claim_pending(self, key: str) -> dict[str, Any] | None:
        stored = self._pending.pop(key)
        return None if stored is None else dict(json.loads(stored))

    async def peek_pending(self, key: str) -> dict[str, Any] | None:
        stored = self._pending.get(key)
        return None if stored is None else dict(json.loads(stored))

    # -- routes -----------------------------------------------------------------------

    async def put_route(self, key: str, target: str, ttl: float) -> None:
        self._routes.set(key, target, ttl)

    async def get_route(self, key: str) -> str | None:
        found = self._routes.get(key)
        return None if found is None else str(found)

    async def drop_route(self, key: str, target: str) -> bool:
        if self._routes.get(key) != target:
            return False
        self._routes.pop(key)
        return True

    # -- ownership ------------------------------------------------------------------

    async def claim_owner(
        self, call_id: str, worker_id: str, *, ttl: float = DEFAULT_LEASE_TTL
    ) -> bool:
        current = await self.owner_of(call_id)
        if current is not None and current != worker_id:
            return False
        self._owners.set(call_id, json_text(worker_id), ttl)
        self._leases[call_id] = (self._clock() + ttl, worker_id)
        return True

    async def renew_leases(
        self, worker_id: str, calls: Mapping[str, str | None], ttl: float
    ) -> set[str]:
        renewed = set()
        for call_id, agent_id in calls.items():
            if await self.owner_of(call_id) != worker_id:
                continue
            self._owners.set(call_id, json_text(worker_id), ttl)
            self._leases[call_id] = (self._clock() + ttl, worker_id)
            renewed.add(call_id)
            slots = self._live_slots(agent_id) if agent_id is not None else {}
            if call_id in slots:
                slots[call_id] = self._clock() + ttl
        return renewed

    async def owner_of(self, call_id: str) -> str | None:
        stored = self._owners.get(call_id)
        return None if stored is None else str(json.loads(stored))

    async def release_owner(self, call_id: str, worker_id: str) -> bool:
        if await self.owner_of(call_id) != worker_id:
            return False
        self._owners.pop(call_id)
        self._leases.pop(call_id, None)
        return True

    async def aged_calls(
        self, state: str, age: float, *, limit: int = 100, after: str | None = None
    ) -> tuple[list[str], str | None]:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        start: tuple[float, str] | None = None
        if after is not None:
            score, _, call_id = after.partition("|")
            start = (float(score), call_id)
        cutoff = self._clock() - age
        aged = sorted(
            (at, call_id)
            for call_id, at in self._created.items()
            if at <= cutoff and (start is None or (at, call_id) > start)
        )
        batch = aged[:limit]
        out = []
        for _, call_id in batch:
            doc = self._load_call(call_id)
            if doc is not None and doc.data.get(STATE_KEY) == state:
                out.append(call_id)
            else:
                del self._created[call_id]
        cursor = f"{batch[-1][0]!r}|{batch[-1][1]}" if len(aged) > limit else None
        return out, cursor

    async def lapsed_leases(
        self, lapsed_for: float, *, limit: int = 100, after: str | None = None
    ) -> tuple[list[LapsedLease], str | None]:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        cutoff = self._clock() - lapsed_for
        start: tuple[float, str] | None = None
        if after is not None:
            score, _, call_id = after.partition("|")
            start = (float(score), call_id)
        lapsed = sorted(
            (expiry, call_id)
            for call_id, (expiry, _) in self._leases.items()
            if expiry <= cutoff and (start is None or (expiry, call_id) > start)
        )
        batch = lapsed[:limit]
        out = []
        for _, call_id in batch:
            doc = self._load_call(call_id)
            if doc is None or doc.data.get(STATE_KEY) == ENDED_STATE:
                del self._leases[call_id]  # the call is over
            elif self._owners.get(call_id) is None:
                out.append(LapsedLease(call_id, doc.data.get(STATE_KEY), self._leases[call_id][1]))
        cursor = f"{batch[-1][0]!r}|{batch[-1][1]}" if len(lapsed) > limit else None
        return out, cursor

    # -- a call that outlives its worker ------------------------------------------------

    async def take_over(
        self,
        call_id: str,
        worker_id: str,
        *,
        generation: int,
        ttl: float,
        changes: Mapping[str, Any] | None = None,
    ) -> Document | None:
        current = self._load_call(call_id)
        if current is None:
            return None
        data = current.data
        if data.get(STATE_KEY) not in LIVE_STATES or data.get(GENERATION_KEY, 0) != generation:
            raise Conflict(current)
        merged = {
            **data,
            **json.loads(json_text(dict(changes or {}))),
            OWNER_KEY: worker_id,
            GENERATION_KEY: generation + 1,
        }
        self._store_call(call_id, Document(data=merged, version=current.version + 1), None)
        self._owners.set(call_id, json_text(worker_id), ttl)
        self._leases[call_id] = (self._clock() + ttl, worker_id)
        return self._load_call(call_id)

    async def put_live(
        self, worker_id: str, updates: Mapping[str, LiveUpdate], ttl: float
    ) -> set[str]:
        written = set()
        for call_id, update in updates.items():
            doc = self._load_call(call_id)
            if doc is None or doc.data.get(OWNER_KEY) != worker_id:
                continue
            stored = self._live.get(call_id)
            _, chat, calls = json.loads(stored) if stored is not None else (None, [], [])
            state = [update.doc, chat + update.chat, calls + update.function_calls]
            self._live.set(call_id, json_text(state), ttl)
            written.add(call_id)
        return written

    async def get_live(self, call_id: str) -> LiveState | None:
        stored = self._live.get(call_id)
        if stored is None:
            return None
        doc, chat, calls = json.loads(stored)
        return LiveState(doc, chat, calls)

    async def drop_live(self, call_id: str) -> None:
        self._live.pop(call_id)

    # -- control messages -------------------------------------------------------------

    def _inbox(self, worker_id: str) -> asyncio.Queue[tuple[str, str]]:
        inbox = self._inboxes.get(worker_id)
        if inbox is None:
            inbox = self._inboxes[worker_id] = asyncio.Queue(self._inbox_size)
        return inbox

    async def publish_control(self, call_id: str, message: Mapping[str, Any]) -> bool:
        owner = await self.owner_of(call_id)
        if owner is None:
            return False
        await self.send_control(owner, call_id, message)
        return True

    async def send_control(self, worker_id: str, call_id: str, message: Mapping[str, Any]) -> None:
        inbox = self._inbox(worker_id)
        if inbox.full():
            inbox.get_nowait()
        inbox.put_nowait((call_id, json_text(dict(message))))

    async def send_reply(self, token: str, reply: Mapping[str, Any], *, ttl: float) -> None:
        self._replies.set(token, json_text(dict(reply)), ttl)
        waiter = self._reply_waiters.get(token)
        if waiter is not None:
            waiter.set()

    async def wait_reply(self, token: str, within: float) -> dict[str, Any] | None:
        stored = self._replies.pop(token)
        if stored is None:
            waiter = self._reply_waiters.setdefault(token, asyncio.Event())
            try:
                await asyncio.wait_for(waiter.wait(), within)
            except TimeoutError:
                return None
            finally:
                self._reply_waiters.pop(token, None)
            stored = self._replies.pop(token)
        return None if stored is None else dict(json.loads(stored))

    async def control_messages(
        self, worker_id: str
    ) -> AsyncGenerator[tuple[str, ControlMessage], None]:
        inbox = self._inbox(worker_id)
        while True:
            call_id, message = await inbox.get()
            yield call_id, json.loads(message)

    # -- per-agent concurrency --------------------------------------------------------------

    def _live_slots(self, agent_id: str) -> dict[str, float]:
        now = self._clock()
        slots = self._slots.get(agent_id, {})
        for call_id in [c for c, deadline in slots.items() if deadline <= now]:
            del slots[call_id]
        return slots

    async def acquire_agent_slot(
        self, agent_id: str, call_id: str, limit: int, *, ttl: float = DEFAULT_SLOT_TTL
    ) -> bool:
        slots = self._live_slots(agent_id)
        if call_id not in slots and len(slots) >= limit:
            return False
        slots[call_id] = self._clock() + ttl
        self._slots[agent_id] = slots
        return True

    async def release_agent_slot(self, agent_id: str, call_id: str) -> None:
        slots = self._live_slots(agent_id)
        slots.pop(call_id, None)
        if not slots:
            self._slots.pop(agent_id, None)

    async def agent_slots_in_use(self, agent_id: str) -> int:
        return len(self._live_slots(agent_id))

    # -- heartbeats -------------------------------------------------------------------------

    async def heartbeat(self, worker_id: str, info: Mapping[str, Any], ttl: float) -> None:
        self._workers.set(worker_id, json_text(dict(info)), ttl)

    async def forget_worker(self, worker_id: str) -> None:
        self._workers.pop(worker_id)

    async def live_workers(self) -> dict[str, dict[str, Any]]:
        live = {}
        for worker_id in self._workers.live_keys():
            stored = self._workers.get(worker_id)
            if stored is not None:
                live[worker_id] = json.loads(stored)
        return live

    # -- durable job queue ---------------------------------------------------------------------

    async def enqueue(
        self, queue: str, job_id: str, data: Mapping[str, Any], *, delay: float = 0.0
    ) -> bool:
        q = self._queue(queue)
        if job_id in q.jobs or job_id in q.dead or q.seen.get(job_id) is not None:
            return False
        q.seen.set(job_id, "1", self._job_once_ttl)
        q.jobs[job_id] = (json_text(dict(data)), 0)
        q.schedule(job_id, self._clock() + delay)
        return True

    async def reserve(self, queue: str, visibility_timeout: float) -> Job | None:
        q = self._queues.get(queue)
        if q is None:
            return None
        now = self._clock()
        # As XAUTOCLAIM: a reservation older than the caller's visibility timeout is taken over.
        oldest = next(iter(q.reserved.items()), None)
        if oldest is not None and now - oldest[1] >= visibility_timeout:
            job_id: str | None = oldest[0]
        else:
            job_id = q.pop_due(now)
        if job_id is None:
            return None
        q.due.pop(job_id, None)
        q.reserved.pop(job_id, None)
        q.reserved[job_id] = now
        data, attempts = q.jobs[job_id]
        attempts += 1
        q.jobs[job_id] = (data, attempts)
        return Job(job_id=job_id, data=json.loads(data), attempts=attempts)

    async def ack(self, queue: str, job_id: str) -> None:
        q = self._queues.get(queue)
        if q is not None:
            q.jobs.pop(job_id, None)
            q.due.pop(job_id, None)
            q.reserved.pop(job_id, None)

    async def nack(self, queue: str, job: Job, delay: float) -> bool:
        q = self._queues.get(queue)
        stored = None if q is None else q.jobs.get(job.job_id)
        if q is None or stored is None or stored[1] != job.attempts:
            return False
        q.reserved.pop(job.job_id, None)
        q.schedule(job.job_id, self._clock() + delay)
        return True

    async def queue_length(self, queue: str) -> int:
        q = self._queues.get(queue)
        return 0 if q is None else len(q.jobs)

    def _queue(self, queue: str) -> _Queue:
        q = self._queues.get(queue)
        if q is None:
            q = self._queues[queue] = _Queue(self._clock)
        return q

    # -- dead letters ----------------------------------------------------------------------

    async def dead_letter(self, queue: str, job: Job, reason: str) -> bool:
        q = self._queues.get(queue)
        stored = None if q is None else q.jobs.get(job.job_id)
        if q is None or stored is None or stored[1] != job.attempts:
            return False
        del q.jobs[job.job_id]
        q.due.pop(job.job_id, None)
        q.reserved.pop(job.job_id, None)
        q.dead.pop(job.job_id, None)
        q.dead[job.job_id] = (stored[0], stored[1], reason, time.time())
        while len(q.dead) > self._dead_max:
            del q.dead[next(iter(q.dead))]
        return True

    async def dead_letters(self, queue: str, limit: int = 100) -> list[DeadLetter]:
        q = self._queues.get(queue)
        if q is None or limit <= 0:
            return []
        newest = list(reversed(q.dead.items()))[:limit]
        return [
            DeadLetter(job_id, json.loads(data), attempts, reason, at)
            for job_id, (data, attempts, reason, at) in newest
        ]

    async def dead_letter_count(self, queue: str) -> int:
        q = self._queues.get(queue)
        return 0 if q is None else len(q.dead)

    async def retry_dead_letter(self, queue: str, job_id: str) -> bool:
        q = self._queues.get(queue)
        dead = None if q is None else q.dead.pop(job_id, None)
        if q is None or dead is None:
            return False
        q.jobs[job_id] = (dead[0], 0)
        q.schedule(job_id, self._clock())
        return True

    # -- session continuation --------------------------------------------------------------

    async def put_session(self, session_id: str, data: Mapping[str, Any], ttl: float) -> None:
        self._sessions.set(session_id, json_text(dict(data)), ttl)

    async def get_session(self, session_id: str) -> dict[str, Any] | None:
        stored = self._sessions.get(session_id)
        return None if stored is None else dict(json.loads(stored))
