"""The Coordinator: what every worker must agree on, behind one interface.

Why it exists
-------------
Calls land on whichever worker the load balancer picks, and a call's
signalling and media may land on different workers. Everything a *second*
worker needs to know about a call goes through a :class:`Coordinator`:
call records, pending registrations, which worker owns a call's media,
control messages to that owner, per-agent concurrency slots, worker
heartbeats and the durable queue of end-of-call webhooks. Audio never does.

Rules for backends
------------------
* Every method is ONE atomic step. A Redis backend must be able to do each
  with one command, a ``MULTI`` block or one Lua script; no contract below
  needs the caller to read, modify and write back across two calls.
* Values cross the interface as JSON-able data and are stored as JSON, also
  in memory, so that no two holders share a mutable object and a value that
  would not survive Redis fails in the embedded backend too.
* Durations (``ttl``, ``delay``, ``visibility_timeout``) are seconds counted
  on the backend's own clock (Redis: server ``TIME``), never wall-clock
  timestamps from a worker, so clock skew between workers does not matter.
* Everything expires or is bounded: ended call records, pending
  registrations, heartbeats, agent slots, control inboxes, session
  continuations, the once-per-job markers and dead letters.
* Call records are versioned JSON documents, not objects: the coordinator
  knows one convention of their shape (a string ``state``, ``"ended"`` when
  the call is over) and nothing else, so it imports nothing of ``calls``.
  Every change is a field merge in one step, optionally guarded by a
  compare-and-set on the state or the version; nobody writes a whole record
  back over fields another worker set meanwhile.

A backend passes ``tests/coord/test_contract.py``; that suite is the
specification in executable form.
"""

from __future__ import annotations

import abc
import json
from collections.abc import AsyncGenerator, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

#: How long an ended call's record stays readable unless ``put_call`` says otherwise.
DEFAULT_ENDED_CALL_TTL = 3600.0
#: Safety net for a slot whose call never released it (its worker died): longest call.
DEFAULT_SLOT_TTL = 4 * 3600.0
#: Control messages waiting for a worker that is not listening; the oldest are dropped.
DEFAULT_CONTROL_INBOX_SIZE = 256
#: How long a job id stays "seen" after its enqueue, so a call's webhook is queued once
#: even when a second worker ends the same call after the first one was delivered.
DEFAULT_JOB_ONCE_TTL = 7 * 24 * 3600.0
#: Dead letters kept per queue; past that the oldest are dropped (an operator's backlog).
DEFAULT_DEAD_LETTER_MAX = 10_000
#: A media owner's lease unless the caller says otherwise; renewed by the owner's heartbeat.
DEFAULT_LEASE_TTL = 15.0
#: How long an unread control reply is kept (its waiter gave up or died).
DEFAULT_REPLY_TTL = 30.0

ControlMessage = dict[str, Any]
#: The document key every call record has; ``ENDED_STATE`` leaves the active index.
STATE_KEY = "state"
ENDED_STATE = "ended"
#: The record's field holding the end-of-call webhook job while it is owed (the outbox).
OWED_FIELD = "webhook_owed"
#: The field holding the record's own id (what :meth:`Coordinator.page_active_calls` orders by).
CALL_ID_KEY = "call_id"
#: The field naming the worker that runs the call's media (its writes are fenced on it).
OWNER_KEY = "owner"
#: The field counting the times a live call was taken over (:meth:`Coordinator.take_over`).
GENERATION_KEY = "generation"
#: The states of a call whose media runs on some worker.
LIVE_STATES = ("connecting", "active")


def json_text(value: Any) -> str:
    """The compact JSON text every backend stores: one encoding, so equal values compare equal."""
    return json.dumps(value, separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class Document:
    """A stored call record: its JSON fields and its version (1 on creation, +1 per change)."""

    data: dict[str, Any]
    version: int


class Conflict(Exception):
    """A guarded update found the document in another state or version than expected."""

    def __init__(self, current: Document) -> None:
        super().__init__(
            f"call record is {current.data.get(STATE_KEY)!r} at version {current.version}"
        )
        self.current = current


@dataclass(frozen=True, slots=True)
class Job:
    """A reserved queue job.

    ``attempts`` counts reservations including this one; it doubles as the
    fencing token for :meth:`Coordinator.nack`, so a worker whose reservation
    has already expired (and was taken over) cannot reschedule the job.
    """

    job_id: str
    data: dict[str, Any]
    attempts: int


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A job given up on: kept, with why, until an operator retries it (or it ages out).

    ``dead_at`` is unix seconds on the backend's clock.
    """

    job_id: str
    data: dict[str, Any]
    attempts: int
    reason: str
    dead_at: float


@dataclass(frozen=True, slots=True)
class LapsedLease:
    """A call whose media lease lapsed without being released, and still live.

    ``state`` is the record's state; ``holder`` the worker that held the lease
    last (None if unknown).
    """

    call_id: str
    state: Any
    holder: str | None


@dataclass(frozen=True, slots=True)
class LiveUpdate:
    """A live call's state as its owner writes it (:meth:`Coordinator.put_live`).

    ``doc`` is small and replaced whole (the network's identity of the call, what
    the caller has heard, counters); the conversation only grows, so ``chat`` and
    ``function_calls`` hold the entries added since the owner's last write, appended.
    """

    doc: dict[str, Any]
    chat: list[dict[str, Any]] = field(default_factory=list)
    function_calls: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class LiveState:
    """What :meth:`Coordinator.get_live` read: the last document and every entry appended."""

    doc: dict[str, Any]
    chat: list[dict[str, Any]]
    function_calls: list[dict[str, Any]]


class Coordinator(abc.ABC):
    """Shared state for all workers. See the module docstring for the rules."""

    #: Whether the state outlives this process (other workers see it and carry
    #: on). False for the in-memory backend: what is queued dies with us.
    shared: bool = False
    #: What the backend raises when it cannot be reached (not a conflict, a
    #: miss or a bug): the API turns these into 503 with Retry-After.
    unavailable: tuple[type[BaseException], ...] = (OSError, TimeoutError)

    # -- lifecycle ---------------------------------------------------------

    @abc.abstractmethod
    async def ping(self) -> bool:
        """Whether the backend answers (readiness)."""

    async def durability_warnings(self) -> list[str]:
        """What in the backend's own configuration can lose records, leases or jobs."""
        return []

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections. Idempotent."""

    # -- call records ------------------------------------------------------

    @abc.abstractmethod
    async def create_call(
        self, call_id: str, data: Mapping[str, Any], *, ttl: float | None = None
    ) -> Document | None:
        """Store a new call record at version 1; None (and nothing stored) if it exists.

        ``data`` must carry a string ``state``. A record whose state is not
        ``ended`` is kept without expiry unless ``ttl`` is given.
        """

    @abc.abstractmethod
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
        """Merge ``changes`` into the record's fields in one step; return the new document.

        Fields not named are left as they are, so writers of different fields
        never lose each other's updates. With ``if_state`` / ``if_version``
        the change is a compare-and-set: it is applied only while the stored
        state is one of ``if_state`` and the version equals ``if_version``;
        otherwise nothing changes and :class:`Conflict` carries the current
        document. Returns None, storing nothing, when the call is not stored.
        A record moving to ``ended`` leaves the active index and expires after
        ``ttl`` (default: the backend's ended-call TTL).

        ``if_unowned`` adds one more guard, checked in the same step: no
        worker holds the call's lease (:meth:`claim_owner`). It lets any
        worker end the call of a dead one without racing an owner that
        renews or re-claims its lease at that moment.

        ``owed_at`` (Unix time) files the call, in the same step, as owing its
        end-of-call webhook, whose job ``changes`` puts in :data:`OWED_FIELD`:
        :meth:`owed_calls` lists it until :meth:`settle_owed` (the transactional
        outbox, :mod:`telephony_edge.calls.outbox`).

        ``if_owner`` fences a media owner's writes: the change is applied only
        while the record's :data:`OWNER_KEY` is ``if_owner`` or null, so a worker
        whose call was taken over (:meth:`take_over`) can no longer write it.
        """

    @abc.abstractmethod
    async def owed_calls(self, older_than: float, limit: int = 100) -> list[tuple[str, Any]]:
        """Calls filed as owing their webhook before ``older_than`` (Unix time), oldest first:
        (call id, the owed job as stored). Entries whose record has expired are dropped."""

    @abc.abstractmethod
    async def settle_owed(self, call_id: str) -> bool:
        """The call's webhook is queued: it is owed no more (True if it was owed)."""

    @abc.abstractmethod
    async def get_call(self, call_id: str) -> Document | None:
        """The stored record, or None if unknown or expired."""

    @abc.abstractmethod
    async def list_active_calls(self) -> list[Document]:
        """Every stored record whose state is not ``ended``."""

    async def page_active_calls(
        self,
        *,
        where: Mapping[str, Any] | None = None,
        after: str | None = None,
        limit: int = 100,
        fields: Collection[str] | None = None,
    ) -> tuple[list[tuple[str, Document]], str | None]:
        """One page of the active calls whose fields equal ``where``, ordered by call id.

        Returns ``(call id, document)`` pairs and the cursor of the next page
        (the last id of this one; None when this page is the last). Ordering
        by id makes the cursor stable: a call created or ended meanwhile
        never shifts the others between pages. With ``fields``, each
        document holds only those fields (and ``call_id``): what a caller
        that counts needs, read and decoded without the rest. The default
        reads the whole index (see :meth:`list_active_calls`); the Redis
        backend reads only the page (its index is ordered by id).
        """
        if limit < 1:
            raise ValueError("limit must be at least 1")
        wanted = dict(where or {})
        matching = sorted(
            (doc.data[CALL_ID_KEY], doc)
            for doc in await self.list_active_calls()
            if isinstance(doc.data.get(CALL_ID_KEY), str)
            and (after is None or doc.data[CALL_ID_KEY] > after)
            and all(doc.data.get(k) == v for k, v in wanted.items())
        )
        page = matching[:limit]
        if fields is not None:
            keep = {*fields, *wanted, CALL_ID_KEY}
            page = [
                (call_id, Document({k: v for k, v in doc.data.items() if k in keep}, doc.version))
                for call_id, doc in page
            ]
        return page, (page[-1][0] if len(matching) > limit else None)

    @abc.abstractmethod
    async def aged_calls(
        self, state: str, age: float, *, limit: int = 100, after: str | None = None
    ) -> tuple[list[str], str | None]:
        """Calls created at least ``age`` seconds ago that are still in ``state``.

        Every record is filed by its creation (in the step that creates it);
        this read drops the entries whose record has left ``state`` (or is
        gone), so each call is read about once in its life: the cost follows
        the calls created, not the calls live. At most ``limit`` ids, oldest
        first, and the cursor to pass as ``after`` for the next ones (None:
        no more).
        """

    # -- a call that outlives its worker ----------------------------------------

    @abc.abstractmethod
    async def take_over(
        self,
        call_id: str,
        worker_id: str,
        *,
        generation: int,
        ttl: float,
        changes: Mapping[str, Any] | None = None,
    ) -> Document | None:
        """Make ``worker_id`` the media owner of a live call, in one step.

        Applied only while the record is live (:data:`LIVE_STATES`) and its
        :data:`GENERATION_KEY` (0 when absent) equals ``generation``: then the
        record's :data:`OWNER_KEY` becomes ``worker_id``, its generation
        ``generation + 1``, ``changes`` are merged (version + 1), and the lease
        is ``worker_id``'s for ``ttl`` whoever held it (the leases index with
        it). So of several workers taking the same call over from the same
        generation exactly one wins; the others get :class:`Conflict`, as does a
        record that is over or was taken over since. None when the call is not
        stored.
        """

    @abc.abstractmethod
    async def put_live(
        self, worker_id: str, updates: Mapping[str, LiveUpdate], ttl: float
    ) -> set[str]:
        """Write the live state of calls ``worker_id`` runs (call id → :class:`LiveUpdate`).

        Per call, in one step: the document replaced, the new chat and
        function-call entries appended, everything kept ``ttl`` seconds from
        this write; only while the call's record names ``worker_id`` as its
        owner (a call taken over is left to its new owner). Backends batch the
        calls (Redis: one script per bucket, one round trip). Returns the ids
        written.
        """

    @abc.abstractmethod
    async def get_live(self, call_id: str) -> LiveState | None:
        """The call's live state as last written (one atomic read), or None."""

    @abc.abstractmethod
    async def drop_live(self, call_id: str) -> None:
        """Forget the call's live state (its end is written). Dropping nothing does nothing."""

    # -- pending registrations (SIP register_sip_call, Twilio stream tokens) --

    @abc.abstractmethod
    async def register_pending(self, key: str, payload: Mapping[str, Any], ttl: float) -> bool:
        """Store ``payload`` under ``key`` for ``ttl`` seconds.

        Returns False (and changes nothing) if ``key`` is already pending.
        """

    @abc.abstractmethod
    async def claim_pending(self, key: str) -> dict[str, Any] | None:
        """Take the payload and delete it: among concurrent claims exactly one wins."""

    @abc.abstractmethod
    async def peek_pending(self, key: str) -> dict[str, Any] | None:
        """The payload pending under ``key``, left in place; None if none."""

    # -- routes read by other programs (the SIP proxy in front of the workers) --

    @abc.abstractmethod
    async def put_route(self, key: str, target: str, ttl: float) -> None:
        """Keep ``target`` (plain text) under ``key`` for ``ttl`` seconds, replacing any: where
        a proxy in front of the workers sends what belongs to ``key`` (Redis: the string
        ``<prefix>route:<key>``, which Kamailio reads with ``ndb_redis``)."""

    @abc.abstractmethod
    async def get_route(self, key: str) -> str | None:
        """What is kept under ``key`` (by a worker, or by the proxy: it notes there what it
        saw, e.g. a caller's BYE in a dialog); None if nothing."""

    @abc.abstractmethod
    async def drop_route(self, key: str, target: str) -> bool:
        """Remove the route under ``key`` if it is still ``target`` (a worker clears its
        own only: a call that moved keeps its new route); whether it was removed."""

    # -- ownership of a call's media: a lease ---------------------------------

    @abc.abstractmethod
    async def claim_owner(
        self, call_id: str, worker_id: str, *, ttl: float = DEFAULT_LEASE_TTL
    ) -> bool:
        """Take (or renew) the lease on the call's media unless another worker holds it.

        True if ``worker_id`` now holds it for ``ttl`` seconds (also when it
        already did). A lease not renewed in time lapses: the call then has
        no owner, and whoever finds it so reaps it (``update_call(...,
        if_unowned=True)``).
        """

    @abc.abstractmethod
    async def renew_leases(
        self, worker_id: str, calls: Mapping[str, str | None], ttl: float
    ) -> set[str]:
        """Renew ``worker_id``'s leases on ``calls`` (call id → agent id or None), for ``ttl``.

        One call per heartbeat for all of a worker's calls. Only leases the
        worker still holds are renewed, each with its call's agent slot (if
        the call holds one), so a slot lives exactly as long as its lease.
        Returns the ids renewed; the others were lost (lapsed or taken).
        Each call's lease and each agent's slots are renewed atomically;
        the method as a whole need not be (each renewal is idempotent).
        """

    @abc.abstractmethod
    async def owner_of(self, call_id: str) -> str | None:
        """The worker holding an unexpired lease on the call, or None."""

    async def owners_of(self, call_ids: Collection[str]) -> dict[str, str | None]:
        """:meth:`owner_of` for many calls (backends batch it: one round trip)."""
        return {call_id: await self.owner_of(call_id) for call_id in call_ids}

    @abc.abstractmethod
    async def release_owner(self, call_id: str, worker_id: str) -> bool:
        """Drop the lease if ``worker_id`` holds it; True if it did."""

    @abc.abstractmethod
    async def lapsed_leases(
        self, lapsed_for: float, *, limit: int = 100, after: str | None = None
    ) -> tuple[list[LapsedLease], str | None]:
        """Calls whose lease expired at least ``lapsed_for`` seconds ago and nobody holds.

        The leases index (kept in the same step as :meth:`claim_owner`,
        :meth:`renew_leases` and :meth:`release_owner`) is read from its
        oldest expiry, only where it lapsed: the cost follows the lapsed
        leases, not the live calls. A released lease is not listed; a lapsed
        lease whose call is over (``ended``, or its record gone) is dropped
        from the index by this read, in the step that finds it so. Returns
        at most ``limit`` calls, oldest expiry first, and the cursor to pass
        as ``after`` for the next ones (None: no more).
        """

    # -- control messages to the owner ---------------------------------------

    @abc.abstractmethod
    async def publish_control(self, call_id: str, message: Mapping[str, Any]) -> bool:
        """Send ``message`` (e.g. ``{"action": "hangup"}``) to the call's owner.

        Returns False when the call has no owner (nothing is sent). The
        message waits in the owner's inbox if it is not listening right now
        (bounded; the oldest are dropped first) and is delivered once.
        """

    @abc.abstractmethod
    async def send_control(self, worker_id: str, call_id: str, message: Mapping[str, Any]) -> None:
        """Send ``message`` about ``call_id`` to the worker ``worker_id``, whether or not it
        owns the call (``{"action": "resume"}``: take the call over), through the same inbox
        as :meth:`publish_control`."""

    @abc.abstractmethod
    async def send_reply(self, token: str, reply: Mapping[str, Any], *, ttl: float) -> None:
        """Answer the control message that asked for a reply under ``token``.

        Kept ``ttl`` seconds for :meth:`wait_reply`, which may start before or
        after this; tokens are unique per message (the sender makes them).
        """

    @abc.abstractmethod
    async def wait_reply(self, token: str, within: float) -> dict[str, Any] | None:
        """The reply sent under ``token``, taken once; None if none came ``within`` seconds."""

    @abc.abstractmethod
    def control_messages(self, worker_id: str) -> AsyncGenerator[tuple[str, ControlMessage], None]:
        """``(call_id, message)`` pairs for calls ``worker_id`` owns, in order, forever.

        One consumer per worker id. Never ends by itself: the consumer stops
        it with ``aclose()`` or by being cancelled.
        """

    # -- per-agent concurrency -------------------------------------------------

    @abc.abstractmethod
    async def acquire_agent_slot(
        self, agent_id: str, call_id: str, limit: int, *, ttl: float = DEFAULT_SLOT_TTL
    ) -> bool:
        """Take one of ``limit`` slots of ``agent_id`` for ``call_id``.

        Idempotent per call: acquiring again succeeds and renews the slot's
        ``ttl`` (the safety net that frees slots of a worker that died).
        """

    @abc.abstractmethod
    async def release_agent_slot(self, agent_id: str, call_id: str) -> None:
        """Give the call's slot back. Releasing a slot not held does nothing."""

    @abc.abstractmethod
    async def agent_slots_in_use(self, agent_id: str) -> int:
        """How many unexpired slots of ``agent_id`` are held."""

    # -- worker heartbeats ------------------------------------------------------

    @abc.abstractmethod
    async def heartbeat(self, worker_id: str, info: Mapping[str, Any], ttl: float) -> None:
        """Announce ``worker_id`` alive for ``ttl`` seconds with ``info`` (load, region, url)."""

    @abc.abstractmethod
    async def forget_worker(self, worker_id: str) -> None:
        """Remove a worker at once (clean shutdown) instead of waiting for its ttl."""

    @abc.abstractmethod
    async def live_workers(self) -> dict[str, dict[str, Any]]:
        """worker id → the ``info`` of its latest unexpired heartbeat."""

    # -- durable job queue (end-of-call webhooks) ------------------------------------

    @abc.abstractmethod
    async def enqueue(
        self, queue: str, job_id: str, data: Mapping[str, Any], *, delay: float = 0.0
    ) -> bool:
        """Add a job, due after ``delay`` seconds.

        Once per job id: returns False (and changes nothing) if ``job_id`` was
        enqueued in ``queue`` before, whether it is still queued, delivered,
        or dead-lettered (the marker lasts the backend's once-TTL, a week by
        default), so two workers ending the same call queue one webhook.
        """

    @abc.abstractmethod
    async def reserve(self, queue: str, visibility_timeout: float) -> Job | None:
        """Take over a reservation ``visibility_timeout`` old, else take the earliest due job.

        A job neither acked, nacked nor dead-lettered within that time (its
        worker died or hung) is taken over by the next reserve of any worker
        (Redis: ``XAUTOCLAIM``): delivery is at-least-once. The timeout is the
        claimer's, so every consumer of a queue passes the same one. None if
        no job is due now.
        """

    @abc.abstractmethod
    async def ack(self, queue: str, job_id: str) -> None:
        """Remove the job for good (delivered, or given up on)."""

    @abc.abstractmethod
    async def nack(self, queue: str, job: Job, delay: float) -> bool:
        """Make a reserved job due again after ``delay`` seconds (a retry).

        Ignored, returning False, if the job is gone or was reserved again
        since ``job`` was handed out (``job.attempts`` is stale).
        """

    @abc.abstractmethod
    async def queue_length(self, queue: str) -> int:
        """Jobs in ``queue``, due, delayed or reserved (not dead letters)."""

    # -- dead letters -------------------------------------------------------------------

    @abc.abstractmethod
    async def dead_letter(self, queue: str, job: Job, reason: str) -> bool:
        """Move a reserved job out of the queue into the queue's dead letters.

        Fenced like :meth:`nack`: ignored, returning False, if the job is gone
        or was reserved again since ``job`` was handed out. The oldest dead
        letters are dropped past the backend's bound.
        """

    @abc.abstractmethod
    async def dead_letters(self, queue: str, limit: int = 100) -> list[DeadLetter]:
        """Up to ``limit`` dead letters of ``queue``, the most recent first."""

    @abc.abstractmethod
    async def dead_letter_count(self, queue: str) -> int:
        """How many dead letters ``queue`` holds."""

    @abc.abstractmethod
    async def retry_dead_letter(self, queue: str, job_id: str) -> bool:
        """Put a dead letter back in the queue, due now, its attempts counted from 0.

        False if ``job_id`` is not a dead letter of ``queue``.
        """

    # -- session continuation ----------------------------------------------------------

    @abc.abstractmethod
    async def put_session(self, session_id: str, data: Mapping[str, Any], ttl: float) -> None:
        """Keep what a later call of ``session_id`` needs for ``ttl`` seconds (replacing it)."""

    @abc.abstractmethod
    async def get_session(self, session_id: str) -> dict[str, Any] | None:
        """What :meth:`put_session` kept, or None if nothing or expired."""
