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
``ENQUEUE`` … ``RETRY_DEAD``  the job queue, below.
``forget_worker`` and ``publish_control``'s append are ``MULTI`` blocks;
``claim_pending`` is ``GETDEL``, ``register_pending`` ``SET NX PX``.

The job queue (end-of-call webhooks)
------------------------------------
A Redis Stream with one consumer group, ``workers``; each coordinator is
one consumer (``consumer``: host-pid-random). All queue keys share the tag
``{queue:<name>}``, so every step below is one Lua script on one slot.

``ENQUEUE``   once per job id: ``SET once:<id> NX PX job_once_ttl`` (a week),
              so a call ended twice (a reaper racing the owner, a retried
              teardown) queues one webhook even after the first was
              delivered; data into ``jobs``, ``attempts`` 0, then ``XADD``
              (the group is created with the stream) or, with a delay,
              into ``delayed``.
``RESERVE``   1. due ids of ``delayed`` (score ≤ now) are ``XADD``-ed: the
              due-time sorted set feeds the stream, because a stream has no
              "not before". 2. ``XAUTOCLAIM`` (min idle = the visibility
              timeout, ``COUNT 1``, the cursor kept in ``cursor`` so a long
              pending list is walked across calls): an entry delivered that
              long ago and never acked belonged to a worker that died or
              hung, and is taken over. 3. Else ``XREADGROUP … >``: the next
              new entry. The entry is valid only if ``entry[id]`` still
              names it (else it is a leftover of an ack/retry: ``XACK`` +
              ``XDEL``, next); ``attempts+1`` is the fencing token handed out.
``ACK``       ``XACK`` + ``XDEL`` the entry, drop the job's fields (the
              once-marker stays).
``NACK``      (retry with backoff) if ``attempts`` is still the caller's:
              ``XACK`` + ``XDEL`` the entry, ``ZADD delayed now+delay``; the
              next ``RESERVE`` after that time puts it back on the stream.
``DEAD_LETTER``  fenced the same way: entry acked and deleted, data moved to
              ``dead`` / ``deadinfo`` / ``deadorder``; past ``dead_letter_max``
              the oldest dead letters are dropped.
``DEAD_LETTERS`` newest first; ``RETRY_DEAD`` moves one back (attempts 0,
              ``XADD``). ``FORGET_CONSUMER`` (on ``close``) deletes this
              consumer from the group when it holds no pending entry.

Delivery is at-least-once: a worker killed between ``XREADGROUP`` and
``XACK`` leaves the entry pending; after the visibility timeout any other
worker's ``XAUTOCLAIM`` takes it. The timeout is the claimer's (all workers
use the dispatcher's), not the one given when the entry was read. Stream
entries are deleted once acked, so the stream holds only work in progress.

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
import os
import socket
import uuid
import zlib
from collections import deque
from collections.abc import AsyncGenerator, Collection, Mapping, Sequence
from typing import Any, cast

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from telephony_edge.coord.base import (
    DEFAULT_CONTROL_INBOX_SIZE,
    DEFAULT_DEAD_LETTER_MAX,
    DEFAULT_ENDED_CALL_TTL,
    DEFAULT_JOB_ONCE_TTL,
    DEFAULT_SLOT_TTL,
    ENDED_STATE,
    OWED_FIELD,
    STATE_KEY,
    Conflict,
    ControlMessage,
    Coordinator,
    DeadLetter,
    Document,
    Job,
    json_text,
)
from telephony_edge.coord.redis_index import RedisIndex
from telephony_edge.coord.redis_leases import RedisLeases
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
_BLOCK_MS = 1000
_BLOCK_S = _BLOCK_MS / 1000
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
redis.call('ZADD', KEYS[3], now_ms(), ARGV[1])
return redis.call('HGETALL', KEYS[1])
"""
)

# KEYS: doc, index, owed[, owner: the change needs it absent]. ARGV: call_id,
# ended, ttl|'', ended_ttl, if_version|'', invalid ('1': the change would leave
# no string state), owed_ms|'' (file the call as owing its webhook), n_states
# (-1: no if_state), states..., field, json, ...
_UPDATE_CALL = (
    _PRELUDE
    + _PLACE
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return {'missing'} end
local n = tonumber(ARGV[8])
local ok = n < 0
if not ok then
  local state = redis.call('HGET', KEYS[1], 'f:state')
  for i = 9, 8 + n do
    if ARGV[i] == state then ok = true break end
  end
end
if ok and ARGV[5] ~= '' then ok = redis.call('HGET', KEYS[1], 'v') == ARGV[5] end
if ok and #KEYS >= 4 then ok = redis.call('EXISTS', KEYS[4]) == 0 end
if not ok then return {'conflict', redis.call('HGETALL', KEYS[1])} end
if ARGV[6] == '1' then return {'invalid'} end
if ARGV[7] ~= '' then redis.call('ZADD', KEYS[3], ARGV[7], ARGV[1]) end
local first = 9 + math.max(n, 0)
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

# KEYS: slots. ARGV: ttl_ms, call ids... Renews the unexpired slots among them.
_RENEW_SLOTS = (
    _PRELUDE
    + _EXPIRE_WITH_LATEST
    + """
local now = now_ms()
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local expiry = now + tonumber(ARGV[1])
for first = 2, #ARGV, 1000 do
  local batch = {}
  for i = first, math.min(first + 999, #ARGV) do
    batch[#batch + 1] = expiry
    batch[#batch + 1] = ARGV[i]
  end
  redis.call('ZADD', KEYS[1], 'XX', unpack(batch))
end
expire_with_latest(KEYS[1], nil, now)
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

# -- the job queue (see "The job queue" above) ---------------------------------------------
# KEYS of every queue script: stream, jobs, attempts, entry, delayed, dead, deadinfo,
# deadorder, cursor (one hash tag), then the script's own.
_QUEUE_LIB = """
local GROUP = 'workers'
-- queue keys never expire (an eviction policy such as volatile-lru picks only keys with
-- a TTL): a write makes them persistent again (keys written by older versions had one)
local function touch()
  for i = 1, 9 do redis.call('PERSIST', KEYS[i]) end
end
local function push(id)
  if redis.call('EXISTS', KEYS[1]) == 0 then
    redis.call('XGROUP', 'CREATE', KEYS[1], GROUP, '0', 'MKSTREAM')
  end
  redis.call('HSET', KEYS[4], id, redis.call('XADD', KEYS[1], '*', 'id', id))
end
-- take the job's entry out of the stream (and the group's pending list), and its schedule
local function unlist(id)
  local entry = redis.call('HGET', KEYS[4], id)
  if entry then
    redis.call('XACK', KEYS[1], GROUP, entry)
    redis.call('XDEL', KEYS[1], entry)
    redis.call('HDEL', KEYS[4], id)
  end
  redis.call('ZREM', KEYS[5], id)
end
"""

# KEYS: queue keys, once. ARGV: job_id, data, delay_ms, once_ttl.
_ENQUEUE = (
    _PRELUDE
    + _QUEUE_LIB
    + """
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 or redis.call('HEXISTS', KEYS[6], ARGV[1]) == 1 then
  return 0
end
if not redis.call('SET', KEYS[10], '1', 'NX', 'PX', ARGV[4]) then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[3], ARGV[1], 0)
local delay = tonumber(ARGV[3])
if delay > 0 then
  redis.call('ZADD', KEYS[5], now_ms() + delay, ARGV[1])
else
  push(ARGV[1])
end
touch()
return 1
"""
)

# KEYS: queue keys. ARGV: visibility_ms (integer), consumer.
# Returns {id, data, attempts} or false.
_RESERVE = (
    _PRELUDE
    + _QUEUE_LIB
    + """
local now = now_ms()
local due = redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', now, 'LIMIT', 0, 100)
for i = 1, #due do
  redis.call('ZREM', KEYS[5], due[i])
  if redis.call('HEXISTS', KEYS[2], due[i]) == 1 then push(due[i]) end
end
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
for round = 1, 64 do
  local entry = nil
  -- a reservation older than the visibility timeout: its worker died or hung
  local cursor = redis.call('GET', KEYS[9]) or '0-0'
  local claimed = redis.call('XAUTOCLAIM', KEYS[1], GROUP, ARGV[2], ARGV[1], cursor, 'COUNT', 1)
  redis.call('SET', KEYS[9], claimed[1])
  if #claimed[2] > 0 then
    entry = claimed[2][1]
  else
    local read = redis.call('XREADGROUP', 'GROUP', GROUP, ARGV[2], 'COUNT', 1,
      'STREAMS', KEYS[1], '>')
    if not read then return false end
    entry = read[1][2][1]
  end
  local id = type(entry[2]) == 'table' and entry[2][2] or nil
  local data = id and redis.call('HGET', KEYS[2], id)
  if data and redis.call('HGET', KEYS[4], id) == entry[1] then
    local attempts = redis.call('HINCRBY', KEYS[3], id, 1)
    touch()
    return {id, data, attempts}
  end
  -- an entry whose job was acked, retried or dead-lettered meanwhile: garbage
  redis.call('XACK', KEYS[1], GROUP, entry[1])
  redis.call('XDEL', KEYS[1], entry[1])
end
return false
"""
)

# KEYS: queue keys. ARGV: job_id.
_ACK = (
    _QUEUE_LIB
    + """
unlist(ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
"""
)

# KEYS: queue keys. ARGV: job_id, attempts, delay_ms.
_NACK = (
    _PRELUDE
    + _QUEUE_LIB
    + """
if redis.call('HGET', KEYS[3], ARGV[1]) ~= ARGV[2] then return 0 end
unlist(ARGV[1])
redis.call('ZADD', KEYS[5], now_ms() + tonumber(ARGV[3]), ARGV[1])
touch()
return 1
"""
)

# KEYS: queue keys. ARGV: job_id, attempts, info JSON, max dead letters.
_DEAD_LETTER = (
    _PRELUDE
    + _QUEUE_LIB
    + """
if redis.call('HGET', KEYS[3], ARGV[1]) ~= ARGV[2] then return 0 end
local data = redis.call('HGET', KEYS[2], ARGV[1])
if not data then return 0 end
unlist(ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
redis.call('HSET', KEYS[6], ARGV[1], data)
redis.call('HSET', KEYS[7], ARGV[1], ARGV[3])
redis.call('ZADD', KEYS[8], now_ms(), ARGV[1])
local excess = redis.call('ZCARD', KEYS[8]) - tonumber(ARGV[4])
if excess > 0 then
  local oldest = redis.call('ZRANGE', KEYS[8], 0, excess - 1)
  for i = 1, #oldest do
    redis.call('HDEL', KEYS[6], oldest[i])
    redis.call('HDEL', KEYS[7], oldest[i])
  end
  redis.call('ZREMRANGEBYRANK', KEYS[8], 0, excess - 1)
end
touch()
return 1
"""
)

# KEYS: queue keys. ARGV: limit. Returns {id, dead_at_ms, data, info} per dead letter.
_DEAD_LETTERS = """
local ids = redis.call('ZREVRANGE', KEYS[8], 0, tonumber(ARGV[1]) - 1, 'WITHSCORES')
local out = {}
for i = 1, #ids, 2 do
  local data = redis.call('HGET', KEYS[6], ids[i])
  local info = redis.call('HGET', KEYS[7], ids[i])
  if data and info then out[#out + 1] = {ids[i], ids[i + 1], data, info} end
end
return out
"""

# KEYS: queue keys. ARGV: job_id.
_RETRY_DEAD = (
    _QUEUE_LIB
    + """
local data = redis.call('HGET', KEYS[6], ARGV[1])
if not data then return 0 end
redis.call('HDEL', KEYS[6], ARGV[1])
redis.call('HDEL', KEYS[7], ARGV[1])
redis.call('ZREM', KEYS[8], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], data)
redis.call('HSET', KEYS[3], ARGV[1], 0)
push(ARGV[1])
touch()
return 1
"""
)

# KEYS: stream. ARGV: consumer. Forget this consumer if it holds nothing (clean close).
_FORGET_CONSUMER = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local ok, consumers = pcall(redis.call, 'XINFO', 'CONSUMERS', KEYS[1], 'workers')
if not ok then return 0 end
for _, c in ipairs(consumers) do
  local name, pending
  for i = 1, #c, 2 do
    if c[i] == 'name' then name = c[i + 1] elseif c[i] == 'pending' then pending = c[i + 1] end
  end
  if name == ARGV[1] and pending == 0 then
    return redis.call('XGROUP', 'DELCONSUMER', KEYS[1], 'workers', ARGV[1])
  end
end
return 0
"""


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


class RedisCoordinator(RedisLeases, RedisIndex, Coordinator):
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
        self._ended_ttl = str(_ms(ended_call_ttl))
        self._inbox_size = control_inbox_size
        self._inbox_ttl = _ms(inbox_ttl)
        self._once_ttl = str(_ms(job_once_ttl))
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
        self._renew_slots = script(_RENEW_SLOTS)
        self._acquire_slot = script(_ACQUIRE_SLOT)
        self._slots_in_use = script(_SLOTS_IN_USE)
        self._heartbeat = script(_HEARTBEAT)
        self._live_workers = script(_LIVE_WORKERS)
        self._enqueue = script(_ENQUEUE)
        self._reserve = script(_RESERVE)
        self._ack = script(_ACK)
        self._nack = script(_NACK)
        self._dead_letter = script(_DEAD_LETTER)
        self._dead_letters = script(_DEAD_LETTERS)
        self._retry_dead = script(_RETRY_DEAD)
        self._forget_consumer = script(_FORGET_CONSUMER)
        self._init_leases()
        self._init_index()

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

    def _reply_key(self, token: str) -> str:
        return f"{self._prefix}{{reply:{token}}}:r"

    def _inbox_key(self, worker_id: str) -> str:
        return f"{self._prefix}{{worker:{worker_id}}}:inbox"

    def _slots_key(self, agent_id: str) -> str:
        return f"{self._prefix}{{agent:{agent_id}}}:slots"

    def _worker_keys(self) -> list[str]:
        return [f"{self._prefix}{{workers}}:info", f"{self._prefix}{{workers}}:expiry"]

    def _queue_keys(self, queue: str) -> list[str]:
        """What every queue script touches, in its KEYS order: one hash slot."""
        tag = f"{self._prefix}{{queue:{queue}}}"
        names = (
            *("stream", "jobs", "attempts", "entry", "delayed"),
            *("dead", "deadinfo", "deadorder", "cursor"),
        )
        return [f"{tag}:{name}" for name in names]

    def _once_key(self, queue: str, job_id: str) -> str:
        return f"{self._prefix}{{queue:{queue}}}:once:{job_id}"

    def _session_key(self, session_id: str) -> str:
        return f"{self._prefix}session:{session_id}"

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
            with contextlib.suppress(*_CONNECTION_ERRORS):
                await asyncio.wait_for(
                    self._forget_consumer(keys=self._queue_keys(queue)[:1], args=[self.consumer]),
                    _PING_TIMEOUT,
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
        if_unowned: bool = False,
        owed_at: float | None = None,
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

    # -- ownership: see redis_leases.RedisLeases -----------------------------------------

    async def _renew_agent_slots(self, by_agent: Mapping[str, list[str]], ttl_ms: int) -> None:
        """Renew the slots of these calls of each agent: one script per agent, one round trip."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for agent_id, ids in by_agent.items():
                await self._renew_slots(
                    keys=[self._slots_key(agent_id)], args=[ttl_ms, *ids], client=pipe
                )
            await pipe.execute()

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

    async def send_reply(self, token: str, reply: Mapping[str, Any], *, ttl: float) -> None:
        key = self._reply_key(token)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.rpush(key, json_text(dict(reply)))
            pipe.pexpire(key, _ms(ttl))
            await pipe.execute()

    async def wait_reply(self, token: str, within: float) -> dict[str, Any] | None:
        key = self._reply_key(token)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while True:
            # BLPOP in slices shorter than the socket timeout (0 would block for ever)
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            popped = await self._redis.blpop([key], timeout=max(0.01, min(remaining, _BLOCK_S)))
            if popped is not None:
                return dict(json.loads(popped[1]))

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
            keys=[*self._queue_keys(queue), self._once_key(queue, job_id)],
            args=[
                job_id,
                json_text(dict(data)),
                _ms(delay) if delay > 0 else 0,
                self._once_ttl,
            ],
        )
        return bool(added)

    async def reserve(self, queue: str, visibility_timeout: float) -> Job | None:
        self._queues_used.add(queue)
        reply = await self._reserve(
            keys=self._queue_keys(queue),
            args=[_ms(visibility_timeout), self.consumer],
        )
        if reply is None:
            return None
        job_id, data, attempts = reply
        return Job(job_id=job_id, data=json.loads(data), attempts=int(attempts))

    async def ack(self, queue: str, job_id: str) -> None:
        await self._ack(keys=self._queue_keys(queue), args=[job_id])

    async def nack(self, queue: str, job: Job, delay: float) -> bool:
        rescheduled = await self._nack(
            keys=self._queue_keys(queue),
            args=[job.job_id, job.attempts, repr(delay * 1000)],
        )
        return bool(rescheduled)

    async def queue_length(self, queue: str) -> int:
        return int(await self._redis.hlen(self._queue_keys(queue)[1]))

    # -- dead letters ------------------------------------------------------------------------------

    async def dead_letter(self, queue: str, job: Job, reason: str) -> bool:
        info = json_text({"attempts": job.attempts, "reason": reason})
        moved = await self._dead_letter(
            keys=self._queue_keys(queue),
            args=[job.job_id, job.attempts, info, self._dead_max],
        )
        return bool(moved)

    async def dead_letters(self, queue: str, limit: int = 100) -> list[DeadLetter]:
        if limit <= 0:
            return []
        reply = await self._dead_letters(keys=self._queue_keys(queue), args=[limit])
        letters = []
        for job_id, dead_at_ms, data, info_text in reply:
            info = json.loads(info_text)
            letters.append(
                DeadLetter(
                    job_id=job_id,
                    data=json.loads(data),
                    attempts=int(info["attempts"]),
                    reason=str(info["reason"]),
                    dead_at=float(dead_at_ms) / 1000,
                )
            )
        return letters

    async def dead_letter_count(self, queue: str) -> int:
        return int(await self._redis.hlen(self._queue_keys(queue)[5]))

    async def retry_dead_letter(self, queue: str, job_id: str) -> bool:
        requeued = await self._retry_dead(keys=self._queue_keys(queue), args=[job_id])
        return bool(requeued)

    # -- session continuation ------------------------------------------------------------

    async def put_session(self, session_id: str, data: Mapping[str, Any], ttl: float) -> None:
        await self._redis.set(self._session_key(session_id), json_text(dict(data)), px=_ms(ttl))

    async def get_session(self, session_id: str) -> dict[str, Any] | None:
        stored = await self._redis.get(self._session_key(session_id))
        return None if stored is None else dict(json.loads(stored))


__all__ = ["DEFAULT_KEY_PREFIX", "RedisCoordinator"]
