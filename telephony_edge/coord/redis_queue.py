"""The durable job queue (end-of-call webhooks) in Redis Streams.

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
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from telephony_edge.coord.base import (
    DeadLetter,
    Job,
    json_text,
)
from telephony_edge.coord.redis_common import (
    PRELUDE,
    ms,
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
    PRELUDE
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
    PRELUDE
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
    PRELUDE
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
    PRELUDE
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


class RedisQueue:
    """The job queue and dead letters of :class:`~telephony_edge.coord.redis.RedisCoordinator`
    (a mixin: the coordinator provides the client, the prefix and its consumer name)."""

    _redis: Redis
    _prefix: str
    consumer: str
    _once_ttl: str
    _dead_max: int
    _queues_used: set[str]

    def _init_queue(self) -> None:
        script = self._redis.register_script
        self._enqueue: AsyncScript = script(_ENQUEUE)
        self._reserve: AsyncScript = script(_RESERVE)
        self._ack: AsyncScript = script(_ACK)
        self._nack: AsyncScript = script(_NACK)
        self._dead_letter: AsyncScript = script(_DEAD_LETTER)
        self._dead_letters: AsyncScript = script(_DEAD_LETTERS)
        self._retry_dead: AsyncScript = script(_RETRY_DEAD)
        self._forget_consumer: AsyncScript = script(_FORGET_CONSUMER)

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

    # -- durable job queue ------------------------------------------------------------------------

    async def enqueue(
        self, queue: str, job_id: str, data: Mapping[str, Any], *, delay: float = 0.0
    ) -> bool:
        added = await self._enqueue(
            keys=[*self._queue_keys(queue), self._once_key(queue, job_id)],
            args=[
                job_id,
                json_text(dict(data)),
                ms(delay) if delay > 0 else 0,
                self._once_ttl,
            ],
        )
        return bool(added)

    async def reserve(self, queue: str, visibility_timeout: float) -> Job | None:
        self._queues_used.add(queue)
        reply = await self._reserve(
            keys=self._queue_keys(queue),
            args=[ms(visibility_timeout), self.consumer],
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
