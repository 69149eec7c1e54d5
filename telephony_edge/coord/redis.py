"""Redis Coordinator: the shared backend for many workers (redis-py asyncio, Redis >= 6.2).

Theory of operation
-------------------
Every interface method is one atomic step on the server: a single command,
one ``MULTI`` block, or one Lua script (registered once with
``register_script``; redis-py runs it with ``EVALSHA`` and reloads it after
a failover or restart). Redis runs a script or a ``MULTI`` without
interleaving other clients' commands, which is what makes each
read-modify-write below atomic. Two methods take two steps, each atomic on
its own, and say why below (``list_active_calls``, ``publish_control``).

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
``P{calls:B}:owner:<call_id>``         string    owning worker id; ``owner_ttl`` (renewed
                                                 by every ``claim_owner`` of the owner)
``P{calls:B}:active``                  zset      call ids of bucket B not ended, score =
                                                 creation time; lives as long as its
                                                 members (see below)
``P{worker:<id>}:inbox``               stream    control messages for that worker, ``MAXLEN
                                                 ~ control_inbox_size`` (trimmed in whole
                                                 stream nodes, so about that); ``inbox_ttl``
``P{agent:<agent_id>}:slots``          zset      call ids holding a slot, score = expiry;
                                                 key TTL = the latest slot's expiry
``P{workers}:info``                    hash      worker id → heartbeat info JSON
``P{workers}:expiry``                  zset      worker id → heartbeat expiry; both keys
                                                 expire with the latest heartbeat
``P{queue:<name>}:jobs``               hash      job id → job data JSON
``P{queue:<name>}:attempts``           hash      job id → reservations so far
``P{queue:<name>}:due``                zset      job id → when due (or reservation end);
                                                 the three expire ``queue_ttl`` after the
                                                 queue was last written
``Ppending:<key>``                     string    pending payload JSON, ``PX`` ttl
=====================================  ========  ==========================================

Everything that can be abandoned expires: ended records, owners, inboxes,
slots, heartbeats, pending registrations and idle queues. The only keys
without a TTL are live call records created without one (they are live
state; reaping calls of dead workers is the coordinator's callers' job) and
an active index holding such a record.

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
                  both sides encoded by this module) and version, then merge
                  the named fields (``HSET``), ``HINCRBY v``, place. *place*
                  = ended: leave the index, expire after the ended TTL; live:
                  join the index, expire after ``ttl`` or persist. Fields
                  stay JSON text on the server, so Lua never decodes them
                  (cjson would turn ``[]`` into ``{}`` and round numbers).
``LIST_BUCKET``   read the given records of one bucket, dropping ids whose
                  record expired.
``CLAIM_OWNER`` / ``RELEASE_OWNER``  set-if-absent-or-mine / delete-if-mine.
``ACQUIRE_SLOT``  drop expired slots, admit if held or below the limit, key
                  TTL to the latest slot. ``SLOTS_IN_USE`` counts unexpired.
``HEARTBEAT`` / ``LIVE_WORKERS``  prune expired workers, then write / read.
``ENQUEUE``       ``HSETNX`` the data (idempotent by job id), due at now+delay.
``RESERVE``       pop the earliest due id, ``attempts+1``, due again at
                  now+visibility timeout (so an unacked job comes back).
``NACK``          re-schedule only if ``attempts`` still equals the job's
                  (the fencing token).
``ack``, ``forget_worker`` and ``publish_control``'s append are ``MULTI``
blocks; ``claim_pending`` is ``GETDEL``, ``register_pending`` ``SET NX PX``.

Control messages
----------------
``publish_control`` reads the owner (the call's slot) and then appends to
the owner's inbox stream (the worker's slot): two steps because two slots.
A message therefore goes to whoever owned the call when it was sent, as in
the in-memory backend where an inbox is not purged on release.
``control_messages`` runs on its own connection: ``XREAD BLOCK`` (1 s, so a
closed generator or a lost server is noticed promptly) from the start of
the stream, and deletes each entry when its consumer asks for the next one
or closes the generator. Entries are therefore handed out once in the
normal case and at least once if the worker is cut off between receiving
and deleting one (after a failover, or a crash of this coroutine). Redis
errors make it wait (up to 2 s backoff) and retry; it never ends by itself.

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
import zlib
from collections import deque
from collections.abc import AsyncGenerator, Collection, Mapping, Sequence
from typing import Any, cast

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from telephony_edge.coord.base import (
    DEFAULT_CONTROL_INBOX_SIZE,
    DEFAULT_ENDED_CALL_TTL,
    DEFAULT_SLOT_TTL,
    ENDED_STATE,
    STATE_KEY,
    Conflict,
    ControlMessage,
    Coordinator,
    Document,
    Job,
    json_text,
)
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
#: A queue nobody wrote to for this long is abandoned (retry backoffs are minutes).
DEFAULT_QUEUE_TTL = 7 * 24 * 3600.0
#: ``XREAD BLOCK``: short, so closing or losing the connection is noticed soon.
_BLOCK_MS = 1000
_SOCKET_TIMEOUT = 5.0  # > _BLOCK_MS, so a blocking read never times out the socket
_CONNECT_TIMEOUT = 2.0
_PING_TIMEOUT = 2.0

_STATE_FIELD = "f:" + STATE_KEY
_CONNECTION_ERRORS = (RedisError, OSError, asyncio.TimeoutError)


def _ms(seconds: float) -> int:
    """A positive expiry in milliseconds (``PX 0`` is an error; memory treats 0 as expired)."""
    return max(1, round(seconds * 1000))


# -- Lua ---------------------------------------------------------------------------------

_PRELUDE = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
end
"""

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
  redis.call('ZADD', index, 'NX', now_ms(), call_id)
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

# KEYS: doc, index. ARGV: call_id, ended, ttl|'', ended_ttl, field, json, field, json...
_CREATE_CALL = (
    _PRELUDE
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
return redis.call('HGETALL', KEYS[1])
"""
)

# KEYS: doc, index. ARGV: call_id, ended, ttl|'', ended_ttl, if_version|'',
# invalid ('1': the change would leave no string state), n_states (-1: no
# if_state), states..., field, json, ...
_UPDATE_CALL = (
    _PRELUDE
    + _PLACE
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return {'missing'} end
local n = tonumber(ARGV[7])
local ok = n < 0
if not ok then
  local state = redis.call('HGET', KEYS[1], 'f:state')
  for i = 8, 7 + n do
    if ARGV[i] == state then ok = true break end
  end
end
if ok and ARGV[5] ~= '' then ok = redis.call('HGET', KEYS[1], 'v') == ARGV[5] end
if not ok then return {'conflict', redis.call('HGETALL', KEYS[1])} end
if ARGV[6] == '1' then return {'invalid'} end
local first = 8 + math.max(n, 0)
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

# KEYS: owner. ARGV: worker, ttl.
_CLAIM_OWNER = """
local current = redis.call('GET', KEYS[1])
if current and current ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

# KEYS: owner. ARGV: worker.
_RELEASE_OWNER = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
return 1
"""

# Expire a zset of deadlines (and its companion hash) with its latest deadline.
_EXPIRE_WITH_LATEST = """
local function expire_with_latest(zset, other, now)
  local last = redis.call('ZRANGE', zset, -1, -1, 'WITHSCORES')
  if #last == 0 then return end
  local ttl = math.ceil(tonumber(last[2]) - now) + 1
  redis.call('PEXPIRE', zset, ttl)
  if other then redis.call('PEXPIRE', other, ttl) end
end
"""

# KEYS: slots. ARGV: call_id, limit, ttl_ms.
_ACQUIRE_SLOT = (
    _PRELUDE
    + _EXPIRE_WITH_LATEST
    + """
local now = now_ms()
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if not redis.call('ZSCORE', KEYS[1], ARGV[1])
    and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
expire_with_latest(KEYS[1], nil, now)
return 1
"""
)

# KEYS: slots.
_SLOTS_IN_USE = (
    _PRELUDE
    + """
-- %.17g: Lua's own number-to-string keeps only 14 digits
return redis.call('ZCOUNT', KEYS[1], string.format('(%.17g', now_ms()), '+inf')
"""
)

_PRUNE_WORKERS = """
local function prune(info, expiry, now)
  local dead = redis.call('ZRANGEBYSCORE', expiry, '-inf', now)
  for i = 1, #dead do redis.call('HDEL', info, dead[i]) end
  redis.call('ZREMRANGEBYSCORE', expiry, '-inf', now)
end
"""

# KEYS: info, expiry. ARGV: worker, info JSON, ttl_ms.
_HEARTBEAT = (
    _PRELUDE
    + _EXPIRE_WITH_LATEST
    + _PRUNE_WORKERS
    + """
local now = now_ms()
prune(KEYS[1], KEYS[2], now)
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[1])
expire_with_latest(KEYS[2], KEYS[1], now)
"""
)

# KEYS: info, expiry.
_LIVE_WORKERS = (
    _PRELUDE
    + _PRUNE_WORKERS
    + """
prune(KEYS[1], KEYS[2], now_ms())
return redis.call('HGETALL', KEYS[1])
"""
)

_TOUCH_QUEUE = """
local function touch(ttl)
  for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], ttl) end
end
"""

# KEYS: jobs, attempts, due. ARGV: job_id, data, delay_ms, queue_ttl.
_ENQUEUE = (
    _PRELUDE
    + _TOUCH_QUEUE
    + """
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], 0)
redis.call('ZADD', KEYS[3], now_ms() + tonumber(ARGV[3]), ARGV[1])
touch(ARGV[4])
return 1
"""
)

# KEYS: jobs, attempts, due. ARGV: visibility_ms, queue_ttl. Returns {id, data, attempts}.
_RESERVE = (
    _PRELUDE
    + _TOUCH_QUEUE
    + """
local now = now_ms()
while true do
  local due = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now, 'LIMIT', 0, 1)
  if #due == 0 then return false end
  local id = due[1]
  local data = redis.call('HGET', KEYS[1], id)
  if data then
    local attempts = redis.call('HINCRBY', KEYS[2], id, 1)
    redis.call('ZADD', KEYS[3], now + tonumber(ARGV[1]), id)
    touch(ARGV[2])
    return {id, data, attempts}
  end
  -- the keys expire one by one: a schedule entry without its job is garbage
  redis.call('ZREM', KEYS[3], id)
  redis.call('HDEL', KEYS[2], id)
end
"""
)

# KEYS: jobs, attempts, due. ARGV: job_id, attempts, delay_ms, queue_ttl.
_NACK = (
    _PRELUDE
    + _TOUCH_QUEUE
    + """
if redis.call('HGET', KEYS[2], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('ZADD', KEYS[3], now_ms() + tonumber(ARGV[3]), ARGV[1])
touch(ARGV[4])
return 1
"""
)


def _document(fields: Mapping[str, str] | Sequence[str]) -> Document:
    """A call record from its hash's ``HGETALL`` (a dict from redis-py, a flat list from Lua)."""
    pairs = (
        fields.items()
        if isinstance(fields, Mapping)
        else zip(fields[::2], fields[1::2], strict=True)
    )
    data: dict[str, Any] = {}
    version = 0
    for name, value in pairs:
        if name == "v":
            version = int(value)
        elif name.startswith("f:"):
            data[name[2:]] = json.loads(value)
    return Document(data=data, version=version)


def _field_args(data: Mapping[str, Any]) -> list[str]:
    """Top-level fields as ``name, JSON`` pairs, normalised as JSON would (keys become str)."""
    args: list[str] = []
    for name, value in json.loads(json_text(dict(data))).items():
        args += (name, json_text(value))
    return args


class RedisCoordinator(Coordinator):
    """Shared state in Redis; see the module docstring for keys and scripts."""

    shared = True

    def __init__(
        self,
        client: Redis,
        *,
        key_prefix: str = DEFAULT_KEY_PREFIX,
        ended_call_ttl: float = DEFAULT_ENDED_CALL_TTL,
        control_inbox_size: int = DEFAULT_CONTROL_INBOX_SIZE,
        owner_ttl: float = DEFAULT_SLOT_TTL,
        inbox_ttl: float = DEFAULT_INBOX_TTL,
        queue_ttl: float = DEFAULT_QUEUE_TTL,
        index_buckets: int = DEFAULT_INDEX_BUCKETS,
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
        self._ended_ttl = str(_ms(ended_call_ttl))
        self._inbox_size = control_inbox_size
        self._owner_ttl = str(_ms(owner_ttl))
        self._inbox_ttl = _ms(inbox_ttl)
        self._queue_ttl = str(_ms(queue_ttl))
        self._buckets = index_buckets
        self._ended = json_text(ENDED_STATE)
        self._closed = False
        script = client.register_script
        self._create_call = script(_CREATE_CALL)
        self._update_call = script(_UPDATE_CALL)
        self._list_bucket = script(_LIST_BUCKET)
        self._claim_owner = script(_CLAIM_OWNER)
        self._release_owner = script(_RELEASE_OWNER)
        self._acquire_slot = script(_ACQUIRE_SLOT)
        self._slots_in_use = script(_SLOTS_IN_USE)
        self._heartbeat = script(_HEARTBEAT)
        self._live_workers = script(_LIVE_WORKERS)
        self._enqueue = script(_ENQUEUE)
        self._reserve = script(_RESERVE)
        self._nack = script(_NACK)

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
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
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

    def _owner_key(self, call_id: str) -> str:
        return f"{self._call_tag(call_id)}:owner:{call_id}"

    def _inbox_key(self, worker_id: str) -> str:
        return f"{self._prefix}{{worker:{worker_id}}}:inbox"

    def _slots_key(self, agent_id: str) -> str:
        return f"{self._prefix}{{agent:{agent_id}}}:slots"

    def _worker_keys(self) -> list[str]:
        return [f"{self._prefix}{{workers}}:info", f"{self._prefix}{{workers}}:expiry"]

    def _queue_keys(self, queue: str) -> list[str]:
        tag = f"{self._prefix}{{queue:{queue}}}"
        return [f"{tag}:jobs", f"{tag}:attempts", f"{tag}:due"]

    def _pending_key(self, key: str) -> str:
        return f"{self._prefix}pending:{key}"

    # -- lifecycle -------------------------------------------------------------------------

    async def ping(self) -> bool:
        if self._closed:
            return False
        try:
            return bool(await asyncio.wait_for(self._redis.ping(), _PING_TIMEOUT))
        except _CONNECTION_ERRORS:
            # drop idle pooled connections: after a restart or failover each stale one would
            # otherwise fail one command (no retries) before it reconnects
            with contextlib.suppress(*_CONNECTION_ERRORS):
                await self._redis.connection_pool.disconnect(inuse_connections=False)
            return False

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
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
            keys=self._doc_keys(call_id),
            args=[call_id, self._ended, self._ttl_arg(ttl), self._ended_ttl, *_field_args(data)],
        )
        return None if flat is None else _document(flat)

    async def update_call(
        self,
        call_id: str,
        changes: Mapping[str, Any],
        *,
        if_state: Collection[str] | None = None,
        if_version: int | None = None,
        ttl: float | None = None,
    ) -> Document | None:
        invalid = STATE_KEY in changes and not isinstance(changes[STATE_KEY], str)
        states = [] if if_state is None else [json_text(s) for s in if_state]
        reply = await self._update_call(
            keys=self._doc_keys(call_id),
            args=[
                call_id,
                self._ended,
                self._ttl_arg(ttl),
                self._ended_ttl,
                "" if if_version is None else str(if_version),
                "1" if invalid else "0",
                -1 if if_state is None else len(states),
                *states,
                *_field_args(changes),
            ],
        )
        outcome = reply[0]
        if outcome == "missing":
            return None
        if outcome == "invalid":
            raise ValueError(f"a call record needs a string {STATE_KEY!r}")
        doc = _document(reply[1])
        if outcome == "conflict":
            raise Conflict(doc)
        return doc

    async def get_call(self, call_id: str) -> Document | None:
        flat = cast("dict[str, str]", await self._redis.hgetall(self._doc_keys(call_id)[0]))
        return _document(flat) if flat else None

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
        return [_document(flat) for _, flat in found]

    def _ttl_arg(self, ttl: float | None) -> str:
        return "" if ttl is None else str(_ms(ttl))

    # -- pending registrations -------------------------------------------------------------

    async def register_pending(self, key: str, payload: Mapping[str, Any], ttl: float) -> bool:
        stored = await self._redis.set(
            self._pending_key(key), json_text(dict(payload)), px=_ms(ttl), nx=True
        )
        return bool(stored)

    async def claim_pending(self, key: str) -> dict[str, Any] | None:
        stored = await self._redis.getdel(self._pending_key(key))
        return None if stored is None else dict(json.loads(stored))

    async def peek_pending(self, key: str) -> dict[str, Any] | None:
        stored = await self._redis.get(self._pending_key(key))
        return None if stored is None else dict(json.loads(stored))

    # -- ownership -------------------------------------------------------------------------

    async def claim_owner(self, call_id: str, worker_id: str) -> bool:
        claimed = await self._claim_owner(
            keys=[self._owner_key(call_id)], args=[worker_id, self._owner_ttl]
        )
        return bool(claimed)

    async def owner_of(self, call_id: str) -> str | None:
        return cast("str | None", await self._redis.get(self._owner_key(call_id)))

    async def release_owner(self, call_id: str, worker_id: str) -> bool:
        released = await self._release_owner(keys=[self._owner_key(call_id)], args=[worker_id])
        return bool(released)

    # -- control messages --------------------------------------------------------------------

    async def publish_control(self, call_id: str, message: Mapping[str, Any]) -> bool:
        owner = await self.owner_of(call_id)
        if owner is None:
            return False
        inbox = self._inbox_key(owner)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.xadd(inbox, {"c": call_id, "m": json_text(dict(message))}, maxlen=self._inbox_size)
            pipe.pexpire(inbox, self._inbox_ttl)
            await pipe.execute()
        return True

    async def control_messages(
        self, worker_id: str
    ) -> AsyncGenerator[tuple[str, ControlMessage], None]:
        inbox = self._inbox_key(worker_id)
        conn = self._redis.client()  # its own connection: the blocking read holds it
        batch: deque[tuple[str, dict[str, str]]] = deque()
        delivered: str | None = None  # handed out; deleted when the consumer comes back
        backoff = 0.1
        try:
            while True:
                try:
                    if delivered is not None:
                        await conn.xdel(inbox, delivered)
                        delivered = None
                    if not batch:
                        # Delivered entries are deleted, so the stream's start is what is new.
                        reply = cast(
                            "list[tuple[str, list[tuple[str, dict[str, str]]]]] | None",
                            await conn.xread({inbox: "0-0"}, count=16, block=_BLOCK_MS),
                        )
                        batch.extend(entry for _, entries in reply or () for entry in entries)
                    backoff = 0.1
                except _CONNECTION_ERRORS as exc:
                    log.warning("control inbox of %s: %s; retrying", worker_id, exc)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 2.0)
                    continue
                if not batch:
                    continue
                entry_id, fields = batch.popleft()
                delivered = entry_id
                try:
                    call_id, message = fields["c"], json.loads(fields["m"])
                except (KeyError, ValueError):
                    log.error("control inbox of %s: dropping malformed entry %s", worker_id, fields)
                    continue
                yield call_id, message
        finally:
            if delivered is not None:
                with contextlib.suppress(*_CONNECTION_ERRORS):
                    await asyncio.wait_for(conn.xdel(inbox, delivered), _PING_TIMEOUT)
            with contextlib.suppress(*_CONNECTION_ERRORS):
                await conn.aclose()

    # -- per-agent concurrency ---------------------------------------------------------------

    async def acquire_agent_slot(
        self, agent_id: str, call_id: str, limit: int, *, ttl: float = DEFAULT_SLOT_TTL
    ) -> bool:
        acquired = await self._acquire_slot(
            keys=[self._slots_key(agent_id)], args=[call_id, limit, repr(ttl * 1000)]
        )
        return bool(acquired)

    async def release_agent_slot(self, agent_id: str, call_id: str) -> None:
        await self._redis.zrem(self._slots_key(agent_id), call_id)

    async def agent_slots_in_use(self, agent_id: str) -> int:
        return int(await self._slots_in_use(keys=[self._slots_key(agent_id)]))

    # -- heartbeats ----------------------------------------------------------------------------

    async def heartbeat(self, worker_id: str, info: Mapping[str, Any], ttl: float) -> None:
        await self._heartbeat(
            keys=self._worker_keys(), args=[worker_id, json_text(dict(info)), repr(ttl * 1000)]
        )

    async def forget_worker(self, worker_id: str) -> None:
        info, expiry = self._worker_keys()
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hdel(info, worker_id)
            pipe.zrem(expiry, worker_id)
            await pipe.execute()

    async def live_workers(self) -> dict[str, dict[str, Any]]:
        flat = await self._live_workers(keys=self._worker_keys())
        return {
            worker: json.loads(info) for worker, info in zip(flat[::2], flat[1::2], strict=True)
        }

    # -- durable job queue ------------------------------------------------------------------------

    async def enqueue(
        self, queue: str, job_id: str, data: Mapping[str, Any], *, delay: float = 0.0
    ) -> bool:
        added = await self._enqueue(
            keys=self._queue_keys(queue),
            args=[job_id, json_text(dict(data)), repr(delay * 1000), self._queue_ttl],
        )
        return bool(added)

    async def reserve(self, queue: str, visibility_timeout: float) -> Job | None:
        reply = await self._reserve(
            keys=self._queue_keys(queue), args=[repr(visibility_timeout * 1000), self._queue_ttl]
        )
        if reply is None:
            return None
        job_id, data, attempts = reply
        return Job(job_id=job_id, data=json.loads(data), attempts=int(attempts))

    async def ack(self, queue: str, job_id: str) -> None:
        jobs, attempts, due = self._queue_keys(queue)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hdel(jobs, job_id)
            pipe.hdel(attempts, job_id)
            pipe.zrem(due, job_id)
            await pipe.execute()

    async def nack(self, queue: str, job: Job, delay: float) -> bool:
        rescheduled = await self._nack(
            keys=self._queue_keys(queue),
            args=[job.job_id, job.attempts, repr(delay * 1000), self._queue_ttl],
        )
        return bool(rescheduled)

    async def queue_length(self, queue: str) -> int:
        return int(await self._redis.hlen(self._queue_keys(queue)[0]))


__all__ = ["DEFAULT_KEY_PREFIX", "RedisCoordinator"]
