"""Redis Coordinator: the shared backend for many workers (redis-py asyncio, Redis >= 6.2).

Theory of operation
-------------------
Every interface method is one atomic step on the server: a single command,
one ``MULTI`` block, or one Lua script (registered once with
``register_script``; redis-py runs it with ``EVALSHA`` and reloads it after
a failover or restart). Redis runs a script or a ``MULTI`` without
interleaving other clients' commands, which is what makes each
read-modify-write below atomic. Three methods take two steps, each atomic on
its own, and say why below (``list_active_calls``, ``publish_control``,
``renew_leases``).

All times are read inside scripts with ``redis.call('TIME')`` or are relative
expiries (``PX``/``PEXPIRE``), so they are counted on the server's clock and
workers' clocks never matter. Sorted-set scores holding times are
milliseconds since the epoch on that clock, with a microsecond fraction.

Key layout (``P`` is the configurable prefix, default ``te:``)
---------------------------------------------------------------
=====================================  ========  ==========================================
key                                    type      holds / expiry
=====================================  ========  ==========================================
``P{calls:B}:call:<call_id>``          hash      ``v`` version, ``f:<field>`` JSON of each
                                                 top-level field; ended: ended-call TTL,
                                                 live: the caller's ``ttl`` or none
``P{calls:B}:owner:<call_id>``         string    the media owner's lease: its worker id,
                                                 expiring after the lease ttl (renewed by
                                                 ``claim_owner`` / ``renew_leases``)
``P{calls:B}:active``                  zset      call ids of bucket B not ended, score 0
                                                 (paged by id); lives as long as its
                                                 members (see below)
``P{calls:B}:leases`` / ``:holders``   zset,     the lease index (lease expiry; last holder)
                                       hash      :mod:`~telephony_edge.coord.redis_leases`
``P{calls:B}:live:<call_id>`` …        string,   a live call's state for another worker:
                                       lists     :mod:`~telephony_edge.coord.redis_live`
``P{calls:B}:created``                 zset      setup index (creation time), no TTL:
                                                 :mod:`~telephony_edge.coord.redis_index`
``P{calls:B}:owed``                    zset      call ids of bucket B whose end-of-call
                                                 webhook is owed (the record's
                                                 ``f:webhook_owed``), score = since when
                                                 (ms); no TTL: settled entries leave
``P{worker:<id>}:inbox``               stream    control messages for that worker, ``MAXLEN
                                                 ~ control_inbox_size`` (trimmed in whole
                                                 stream nodes, so about that); ``inbox_ttl``
``P{agent:<agent_id>}:slots``          zset      call ids holding a slot, score = expiry;
                                                 key TTL = the latest slot's expiry
``P{workers}:info``                    hash      worker id → heartbeat info JSON
``P{workers}:expiry``                  zset      worker id → heartbeat expiry; both keys
                                                 expire with the latest heartbeat
``P{queue:<name>}:stream``             stream    one entry ``id=<job id>`` per job ready to
                                                 go; consumer group ``workers``
``P{queue:<name>}:jobs``               hash      job id → job data JSON (queued jobs)
``P{queue:<name>}:attempts``           hash      job id → reservations so far (fencing)
``P{queue:<name>}:entry``              hash      job id → its current stream entry id
``P{queue:<name>}:delayed``            zset      job id → when due (delayed, retries)
``P{queue:<name>}:dead``               hash      job id → data JSON of a dead letter
``P{queue:<name>}:deadinfo``           hash      job id → ``{"attempts","reason"}`` JSON
``P{queue:<name>}:deadorder``          zset      job id → when it died (ms); listing order
``P{queue:<name>}:cursor``             string    ``XAUTOCLAIM`` scan cursor. No queue key
                                                 expires: jobs leave by ack or dead letter,
                                                 dead letters past ``dead_letter_max``
``P{queue:<name>}:once:<job id>``      string    "enqueued once" marker, ``job_once_ttl``
``Ppending:<key>``                     string    pending payload JSON, ``PX`` ttl
``Proute:<key>``                       string    a route for a proxy in front of the workers
                                                 (``sip:<Call-ID>`` → the owner's SIP URI,
                                                 read by Kamailio), ``PX`` ttl
``Psession:<session_id>``              string    session continuation JSON, ``PX`` the
                                                 caller's ttl (``calls.session_ttl_s``)
``P{reply:<token>}:r``                 list      a control message's reply, read once by
                                                 ``BLPOP``; the reply ttl
=====================================  ========  ==========================================

Everything that can be abandoned expires: ended records, owners, inboxes,
slots, heartbeats, pending registrations. Without a TTL, because an eviction
policy that picks keys with one (``volatile-*``) must never take them: live
call records created without one (live state; reaping calls of dead workers
is the coordinator's callers' job), an active index holding such a record,
the lease and setup indexes (bounded by the calls: their readers drop what
is over) and the queues (bounded by their jobs and ``dead_letter_max``).

Hash tags and the active index (Redis Cluster)
----------------------------------------------
A script may only touch keys of one hash slot on Cluster, and "which calls
are active" must change in the same step as the record, or a worker that
dies between two steps leaves the index wrong. One global index key cannot
share a slot with every call, so the index is split into ``index_buckets``
buckets: call ``c`` belongs to bucket ``B = crc32(c) % index_buckets`` and
*all* its keys carry the tag ``{calls:B}``, the bucket's index included.
Creating, updating and ending a record therefore updates the index in the
same script, exactly, with no repair pass and no window. The price:
``list_active_calls`` reads every bucket (one pipelined round trip for the
indexes, one for the records), and call data spreads over ``index_buckets``
slots rather than one per call (32 by default: plenty of parallelism for the
nodes a Cluster of this workload has). The bucket count is fixed per prefix:
change it only together with the prefix. (The alternatives: one ``{calls}``
slot for every call and index, which puts all call traffic on one Cluster
node; or per-call tags with the index updated in a second step, which needs
a time-based grace period on read repair to avoid dropping a call being
created and so is only eventually correct.)

A live record given an explicit ``ttl`` can expire while indexed; the
listing script removes such ids, atomically with finding the record gone.

Scripts
-------
``CREATE_CALL``   exists? else write fields + version 1, place (below).
``UPDATE_CALL``   compare-and-set on state (JSON text compared byte-for-byte,
                  both sides encoded by this module), version and, with
                  ``if_unowned``, the owner key's absence (same bucket tag,
                  so one slot), then merge
                  the named fields (``HSET``), ``HINCRBY v``, place. *place*
                  = ended: leave the index, expire after the ended TTL; live:
                  join the index, expire after ``ttl`` or persist. Fields
                  stay JSON text on the server, so Lua never decodes them
                  (cjson would turn ``[]`` into ``{}`` and round numbers).
``LIST_BUCKET``   read the given records of one bucket, dropping ids whose
                  record expired.
``CLAIM_OWNER`` / ``RELEASE_OWNER`` / ``RENEW_OWNERS``  the leases and their
                  index, in :mod:`telephony_edge.coord.redis_leases` (with the
                  keys ``leases`` and ``holders`` of each bucket); ``RENEW_SLOTS``
                  per agent then extends the renewed calls' slots (``ZADD XX``:
                  a released slot is not revived). Two pipelined round trips
                  per heartbeat, whatever the calls.
``PAGE_IDS`` / ``STILL_IN``  paging the index by id, and the calls still
                  setting up: :mod:`telephony_edge.coord.redis_index`.
``ACQUIRE_SLOT``  drop expired slots, admit if held or below the limit, key
                  TTL to the latest slot. ``SLOTS_IN_USE`` counts unexpired.
``HEARTBEAT`` / ``LIVE_WORKERS``  prune expired workers, then write / read.
``ENQUEUE`` … ``RETRY_DEAD``  the job queue: :mod:`~telephony_edge.coord.redis_queue`.
``forget_worker`` and ``publish_control``'s append are ``MULTI`` blocks;
``claim_pending`` is ``GETDEL``, ``register_pending`` ``SET NX PX``.

The parts
---------
:mod:`~telephony_edge.coord.redis_leases` (ownership),
:mod:`~telephony_edge.coord.redis_live` (live state, takeovers),
:mod:`~telephony_edge.coord.redis_index` (paged index reads),
:mod:`~telephony_edge.coord.redis_presence` (agent slots, heartbeats),
:mod:`~telephony_edge.coord.redis_control` (control messages, each worker's
inbox) and :mod:`~telephony_edge.coord.redis_queue` (the job queue of
end-of-call webhooks) each hold their scripts and say how they work; this
module holds the records, the key layout and the connection.

Errors
------
Commands are not retried by the client: a write whose reply was lost could
otherwise be applied twice (a ``create_call`` would then report "exists").
A Redis error propagates to the caller; ``ping()`` turns it into False.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import uuid
import zlib
from collections.abc import Collection, Mapping
from typing import Any, cast

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError
from redis.exceptions import TimeoutError as RedisTimeoutError

from telephony_edge.coord.base import (
    DEFAULT_CONTROL_INBOX_SIZE,
    DEFAULT_DEAD_LETTER_MAX,
    DEFAULT_ENDED_CALL_TTL,
    DEFAULT_JOB_ONCE_TTL,
    ENDED_STATE,
    OWED_FIELD,
    STATE_KEY,
    Conflict,
    Coordinator,
    Document,
    json_text,
)
from telephony_edge.coord.redis_common import (
    CONNECTION_ERRORS,
    PING_TIMEOUT,
    PRELUDE,
    document_of,
    field_args,
    ms,
)
from telephony_edge.coord.redis_control import RedisControl
from telephony_edge.coord.redis_index import RedisIndex
from telephony_edge.coord.redis_leases import RedisLeases
from telephony_edge.coord.redis_live import RedisLive
from telephony_edge.coord.redis_presence import RedisPresence
from telephony_edge.coord.redis_queue import RedisQueue
from telephony_edge.coord.redis_url import (
    SENTINEL_SCHEME,
    check_redis_url,
    parse_sentinel_url,
    redact_redis_url,
)

log = logging.getLogger(__name__)

DEFAULT_KEY_PREFIX = "te:"
DEFAULT_INDEX_BUCKETS = 32
#: A worker's inbox nobody appended to for this long belongs to a dead worker.
DEFAULT_INBOX_TTL = 24 * 3600.0
#: ``XREAD BLOCK``: short, so closing or losing the connection is noticed soon.
_SOCKET_TIMEOUT = 5.0  # > BLOCK_MS, so a blocking read never times out the socket
_CONNECT_TIMEOUT = 2.0

_STATE_FIELD = "f:" + STATE_KEY


# -- Lua ---------------------------------------------------------------------------------

# Index bookkeeping shared by CREATE_CALL and UPDATE_CALL. The index lives as
# long as its longest-lived member: persistent while it holds a record without
# a TTL, else extended to cover the newest TTL; Redis deletes it when empty.
_PLACE = """
local function place(doc, index, call_id, ended, ttl, ended_ttl)
  if redis.call('HGET', doc, 'f:state') == ended then
    redis.call('ZREM', index, call_id)
    redis.call('PEXPIRE', doc, ttl ~= '' and ttl or ended_ttl)
    return
  end
  local index_ttl = redis.call('PTTL', index)
  redis.call('ZADD', index, 'NX', 0, call_id)
  if ttl == '' then
    redis.call('PERSIST', doc)
    redis.call('PERSIST', index)
  else
    redis.call('PEXPIRE', doc, ttl)
    if index_ttl == -2 or (index_ttl >= 0 and index_ttl < tonumber(ttl)) then
      redis.call('PEXPIRE', index, ttl)
    end
  end
end
"""

# KEYS: doc, index, created. ARGV: call_id, ended, ttl|'', ended_ttl, field, json, ...
_CREATE_CALL = (
    PRELUDE
    + _PLACE
    + """
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
local fields = {'v', 1}
for i = 5, #ARGV, 2 do
  fields[#fields + 1] = 'f:' .. ARGV[i]
  fields[#fields + 1] = ARGV[i + 1]
end
redis.call('HSET', KEYS[1], unpack(fields))
place(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3], ARGV[4])
redis.call('ZADD', KEYS[3], now_ms(), ARGV[1])
return redis.call('HGETALL', KEYS[1])
"""
)

# KEYS: doc, index, owed[, owner: the change needs it absent]. ARGV: call_id,
# ended, ttl|'', ended_ttl, if_version|'', invalid ('1': the change would leave
# no string state), owed_ms|'' (file the call as owing its webhook), if_owner
# JSON|'' (the record's owner must be it or null), n_states (-1: no if_state),
# states..., field, json, ...
_UPDATE_CALL = (
    PRELUDE
    + _PLACE
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return {'missing'} end
local n = tonumber(ARGV[9])
local ok = n < 0
if not ok then
  local state = redis.call('HGET', KEYS[1], 'f:state')
  for i = 10, 9 + n do
    if ARGV[i] == state then ok = true break end
  end
end
if ok and ARGV[5] ~= '' then ok = redis.call('HGET', KEYS[1], 'v') == ARGV[5] end
if ok and #KEYS >= 4 then ok = redis.call('EXISTS', KEYS[4]) == 0 end
if ok and ARGV[8] ~= '' then
  local owner = redis.call('HGET', KEYS[1], 'f:owner')
  ok = not owner or owner == 'null' or owner == ARGV[8]
end
if not ok then return {'conflict', redis.call('HGETALL', KEYS[1])} end
if ARGV[6] == '1' then return {'invalid'} end
if ARGV[7] ~= '' then redis.call('ZADD', KEYS[3], ARGV[7], ARGV[1]) end
local first = 10 + math.max(n, 0)
if first <= #ARGV then
  local fields = {}
  for i = first, #ARGV, 2 do
    fields[#fields + 1] = 'f:' .. ARGV[i]
    fields[#fields + 1] = ARGV[i + 1]
  end
  redis.call('HSET', KEYS[1], unpack(fields))
end
redis.call('HINCRBY', KEYS[1], 'v', 1)
place(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3], ARGV[4])
return {'ok', redis.call('HGETALL', KEYS[1])}
"""
)

# KEYS: doc, owed. ARGV: call_id. The webhook is queued: owed no more.
_SETTLE_OWED = """
redis.call('HDEL', KEYS[1], 'f:webhook_owed')
return redis.call('ZREM', KEYS[2], ARGV[1])
"""

# KEYS: index, doc1..docN. ARGV: ended, id1..idN. Returns {id, fields} per live record.
_LIST_BUCKET = """
local out = {}
for i = 2, #KEYS do
  local fields = redis.call('HGETALL', KEYS[i])
  if #fields == 0 or redis.call('HGET', KEYS[i], 'f:state') == ARGV[1] then
    redis.call('ZREM', KEYS[1], ARGV[i])
  else
    out[#out + 1] = {ARGV[i], fields}
  end
end
return out
"""

# KEYS: route. ARGV: target. Deleted only while it is still that target.
_DROP_ROUTE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


# the parts whose stubs name another part's method come after it (MRO)
class RedisCoordinator(
    RedisPresence, RedisLeases, RedisLive, RedisIndex, RedisControl, RedisQueue, Coordinator
):
    """Shared state in Redis; see the module docstring for keys and scripts."""

    shared = True
    unavailable = (
        RedisConnectionError,  # also MasterNotFoundError (Sentinel) and BusyLoadingError
        RedisTimeoutError,
        ReadOnlyError,  # a replica during failover
        OSError,
        TimeoutError,
    )

    def __init__(
        self,
        client: Redis,
        *,
        key_prefix: str = DEFAULT_KEY_PREFIX,
        ended_call_ttl: float = DEFAULT_ENDED_CALL_TTL,
        control_inbox_size: int = DEFAULT_CONTROL_INBOX_SIZE,
        inbox_ttl: float = DEFAULT_INBOX_TTL,
        index_buckets: int = DEFAULT_INDEX_BUCKETS,
        job_once_ttl: float = DEFAULT_JOB_ONCE_TTL,
        dead_letter_max: int = DEFAULT_DEAD_LETTER_MAX,
        consumer: str | None = None,
        sentinel: Sentinel | None = None,
    ) -> None:
        """Use ``client`` (created with ``decode_responses=True``); this object closes it."""
        if "{" in key_prefix or "}" in key_prefix:
            raise ValueError("key_prefix must not contain '{' or '}' (they are hash tags)")
        if index_buckets < 1 or control_inbox_size < 1:
            raise ValueError("index_buckets and control_inbox_size must be at least 1")
        self._redis = client
        self._sentinel = sentinel
        self._prefix = key_prefix
        self._ended_ttl = str(ms(ended_call_ttl))
        self._inbox_size = control_inbox_size
        self._inbox_ttl = ms(inbox_ttl)
        self._once_ttl = str(ms(job_once_ttl))
        self._dead_max = dead_letter_max
        #: this coordinator's name in the queues' consumer group (one per process)
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._queues_used: set[str] = set()
        self._buckets = index_buckets
        self._ended = json_text(ENDED_STATE)
        self._closed = False
        script = client.register_script
        self._create_call = script(_CREATE_CALL)
        self._update_call = script(_UPDATE_CALL)
        self._settle_owed = script(_SETTLE_OWED)
        self._list_bucket = script(_LIST_BUCKET)
        self._drop_route = script(_DROP_ROUTE)
        self._init_leases()
        self._init_live()
        self._init_index()
        self._init_presence()
        self._init_queue()

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RedisCoordinator:
        """Connect lazily to ``url`` (see :mod:`telephony_edge.coord.redis_url` for the forms)."""
        check_redis_url(url)
        connection: dict[str, Any] = {
            "decode_responses": True,
            "socket_timeout": _SOCKET_TIMEOUT,
            "socket_connect_timeout": _CONNECT_TIMEOUT,
            "retry": Retry(NoBackoff(), 0),
        }
        log.info("coordination: Redis at %s", redact_redis_url(url))
        if not url.lower().startswith(SENTINEL_SCHEME + "://"):
            return cls(Redis.from_url(url, **connection), **options)
        target = parse_sentinel_url(url)
        sentinel_auth = {
            k: v
            for k, v in (
                ("username", target.sentinel_username),
                ("password", target.sentinel_password),
            )
            if v is not None
        }
        sentinel = Sentinel(
            list(target.sentinels),
            sentinel_kwargs={
                "socket_timeout": _CONNECT_TIMEOUT,
                "socket_connect_timeout": _CONNECT_TIMEOUT,
                "decode_responses": True,
                "retry": Retry(NoBackoff(), 0),  # discovery moves on to the next sentinel
                **sentinel_auth,
            },
        )
        client = sentinel.master_for(
            target.service_name,
            db=target.db,
            username=target.username,
            password=target.password,
            ssl=target.ssl,
            **connection,
        )
        return cls(client, sentinel=sentinel, **options)

    # -- keys ------------------------------------------------------------------------------

    def _bucket_tag(self, bucket: int) -> str:
        return f"{self._prefix}{{calls:{bucket}}}"

    def _call_tag(self, call_id: str) -> str:
        return self._bucket_tag(zlib.crc32(call_id.encode()) % self._buckets)

    def _doc_keys(self, call_id: str) -> list[str]:
        """The record and its bucket's active index: one slot."""
        tag = self._call_tag(call_id)
        return [f"{tag}:call:{call_id}", f"{tag}:active"]

    def _owed_key(self, call_id: str) -> str:
        """The bucket's calls owing their webhook (score: since when, ms): the record's slot."""
        return f"{self._call_tag(call_id)}:owed"

    def _session_key(self, session_id: str) -> str:
        return f"{self._prefix}session:{session_id}"

    def _pending_key(self, key: str) -> str:
        return f"{self._prefix}pending:{key}"

    def _route_key(self, key: str) -> str:
        return f"{self._prefix}route:{key}"

    # -- lifecycle -------------------------------------------------------------------------

    async def ping(self) -> bool:
        if self._closed:
            return False
        try:
            return bool(await asyncio.wait_for(self._redis.ping(), PING_TIMEOUT))
        except CONNECTION_ERRORS:
            # drop idle pooled connections: after a restart or failover each stale one would
            # otherwise fail one command (no retries) before it reconnects
            with contextlib.suppress(*CONNECTION_ERRORS):
                await self._redis.connection_pool.disconnect(inuse_connections=False)
            return False

    async def durability_warnings(self) -> list[str]:
        """Eviction and persistence, from INFO (managed Redis often refuses CONFIG GET).

        An eviction policy other than ``noeviction`` lets Redis drop call
        records, leases and queued webhooks under memory pressure; a primary
        without AOF comes back from a restart empty (live calls survive that,
        see the lease reaper, but webhooks queued in its last moments may not).
        """
        memory = await self._redis.info("memory")
        persistence = await self._redis.info("persistence")
        replication = await self._redis.info("replication")
        warnings = []
        policy = str(memory.get("maxmemory_policy", "noeviction"))
        if policy != "noeviction":
            warnings.append(
                f"Redis maxmemory-policy is {policy}: under memory pressure it evicts call"
                " records, leases and queued webhooks; set it to noeviction"
            )
        if replication.get("role") == "master" and not int(persistence.get("aof_enabled", 0)):
            warnings.append(
                "Redis keeps no append-only file (appendonly no): a restart comes back"
                " without the webhook queue's latest jobs; set appendonly yes"
            )
        return warnings

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for queue in self._queues_used:  # a consumer holding nothing need not stay listed
            with contextlib.suppress(*CONNECTION_ERRORS):
                await asyncio.wait_for(
                    self._forget_consumer(keys=self._queue_keys(queue)[:1], args=[self.consumer]),
                    PING_TIMEOUT,
                )
        await self._redis.aclose()
        if self._sentinel is not None:
            for client in self._sentinel.sentinels:
                await client.aclose()

    # -- call records ----------------------------------------------------------------------

    async def create_call(
        self, call_id: str, data: Mapping[str, Any], *, ttl: float | None = None
    ) -> Document | None:
        if not isinstance(data.get(STATE_KEY), str):
            raise ValueError(f"a call record needs a string {STATE_KEY!r}")
        flat = await self._create_call(
            keys=[*self._doc_keys(call_id), f"{self._call_tag(call_id)}:created"],
            args=[call_id, self._ended, self._ttl_arg(ttl), self._ended_ttl, *field_args(data)],
        )
        return None if flat is None else document_of(flat)

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
        invalid = STATE_KEY in changes and not isinstance(changes[STATE_KEY], str)
        states = [] if if_state is None else [json_text(s) for s in if_state]
        keys = [*self._doc_keys(call_id), self._owed_key(call_id)]
        if if_unowned:
            keys.append(self._owner_key(call_id))  # same bucket tag: same slot
        reply = await self._update_call(
            keys=keys,
            args=[
                call_id,
                self._ended,
                self._ttl_arg(ttl),
                self._ended_ttl,
                "" if if_version is None else str(if_version),
                "1" if invalid else "0",
                "" if owed_at is None else str(round(owed_at * 1000)),
                "" if if_owner is None else json_text(if_owner),
                -1 if if_state is None else len(states),
                *states,
                *field_args(changes),
            ],
        )
        outcome = reply[0]
        if outcome == "missing":
            return None
        if outcome == "invalid":
            raise ValueError(f"a call record needs a string {STATE_KEY!r}")
        doc = document_of(reply[1])
        if outcome == "conflict":
            raise Conflict(doc)
        return doc

    async def owed_calls(self, older_than: float, limit: int = 100) -> list[tuple[str, Any]]:
        cutoff = f"({round(older_than * 1000)}"
        owed_keys = [f"{self._bucket_tag(bucket)}:owed" for bucket in range(self._buckets)]
        async with self._redis.pipeline(transaction=False) as pipe:
            for owed in owed_keys:
                pipe.zrangebyscore(owed, "-inf", cutoff, 0, limit, withscores=True)
            per_bucket = cast("list[list[tuple[str, float]]]", await pipe.execute())
        entries = sorted(
            ((score, call_id, owed) for owed, ids in zip(owed_keys, per_bucket, strict=True)
             for call_id, score in ids),
        )[:limit]  # fmt: skip
        if not entries:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for _, call_id, _ in entries:
                pipe.hget(self._doc_keys(call_id)[0], f"f:{OWED_FIELD}")
            jobs = cast("list[str | None]", await pipe.execute())
        found: list[tuple[str, Any]] = []
        for (_, call_id, owed), job in zip(entries, jobs, strict=True):
            if job is None:  # the record expired, or a settle raced this read
                await self._redis.zrem(owed, call_id)
            else:
                found.append((call_id, json.loads(job)))
        return found

    async def settle_owed(self, call_id: str) -> bool:
        keys = [self._doc_keys(call_id)[0], self._owed_key(call_id)]
        return bool(await self._settle_owed(keys=keys, args=[call_id]))

    async def get_call(self, call_id: str) -> Document | None:
        flat = cast("dict[str, str]", await self._redis.hgetall(self._doc_keys(call_id)[0]))
        return document_of(flat) if flat else None

    async def list_active_calls(self) -> list[Document]:
        # Step 1: every bucket's index, in one round trip.
        async with self._redis.pipeline(transaction=False) as pipe:
            for bucket in range(self._buckets):
                pipe.zrange(f"{self._bucket_tag(bucket)}:active", 0, -1, withscores=True)
            indexes: list[list[tuple[str, float]]] = await pipe.execute()
        created = {call_id: score for index in indexes for call_id, score in index}
        if not created:
            return []
        # Step 2: the records of the non-empty buckets, one script per bucket (one slot
        # each), in one round trip. Ids added since step 1 are simply not seen yet.
        async with self._redis.pipeline(transaction=False) as pipe:
            for bucket, index in enumerate(indexes):
                if index:
                    ids = [call_id for call_id, _ in index]
                    tag = self._bucket_tag(bucket)
                    await self._list_bucket(
                        keys=[f"{tag}:active", *(f"{tag}:call:{c}" for c in ids)],
                        args=[self._ended, *ids],
                        client=pipe,
                    )
            replies: list[list[list[Any]]] = await pipe.execute()
        found = [(call_id, flat) for reply in replies for call_id, flat in reply]
        found.sort(key=lambda item: (created[item[0]], item[0]))
        return [document_of(flat) for _, flat in found]

    def _ttl_arg(self, ttl: float | None) -> str:
        return "" if ttl is None else str(ms(ttl))

    # -- pending registrations -------------------------------------------------------------

    async def register_pending(self, key: str, payload: Mapping[str, Any], ttl: float) -> bool:
        stored = await self._redis.set(
            self._pending_key(key), json_text(dict(payload)), px=ms(ttl), nx=True
        )
        return bool(stored)

    async def claim_pending(self, key: str) -> dict[str, Any] | None:
        stored = await self._redis.getdel(self._pending_key(key))
        return None if stored is None else dict(json.loads(stored))

    async def peek_pending(self, key: str) -> dict[str, Any] | None:
        stored = await self._redis.get(self._pending_key(key))
        return None if stored is None else dict(json.loads(stored))

    # -- routes ------------------------------------------------------------------------------

    async def put_route(self, key: str, target: str, ttl: float) -> None:
        await self._redis.set(self._route_key(key), target, px=ms(ttl))

    async def get_route(self, key: str) -> str | None:
        found = await self._redis.get(self._route_key(key))
        return None if found is None else str(found)

    async def drop_route(self, key: str, target: str) -> bool:
        return bool(await self._drop_route(keys=[self._route_key(key)], args=[target]))

    # -- session continuation ------------------------------------------------------------

    async def put_session(self, session_id: str, data: Mapping[str, Any], ttl: float) -> None:
        await self._redis.set(self._session_key(session_id), json_text(dict(data)), px=ms(ttl))

    async def get_session(self, session_id: str) -> dict[str, Any] | None:
        stored = await self._redis.get(self._session_key(session_id))
        return None if stored is None else dict(json.loads(stored))


__all__ = ["DEFAULT_KEY_PREFIX", "RedisCoordinator"]
