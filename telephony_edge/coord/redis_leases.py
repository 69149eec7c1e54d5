"""Leases on calls' media in Redis, and the index of them that reapers read.

Theory of operation
-------------------
A call's media owner holds a lease: ``P{calls:B}:owner:<call_id>``, a string
holding its worker id that expires after the lease ttl (``PX``). Every step
that takes, renews or drops a lease also writes, in the same script, the
bucket's *lease index*:

=====================================  ========  ==========================================
key                                    type      holds
=====================================  ========  ==========================================
``P{calls:B}:leases``                  zset      call id → when its lease expires (ms, the
                                                 server's clock); no TTL, bounded by calls
``P{calls:B}:holders``                 hash      call id → the worker that held it last
=====================================  ========  ==========================================

A released lease leaves the index; a lease that lapses stays in it with its
expiry as score, which is what a reaper wants: ``ZRANGEBYSCORE leases -inf
<now - lapsed_for> LIMIT`` names exactly the calls whose owner stopped
renewing at least ``lapsed_for`` ago, whatever the number of live calls.
Same bucket tag as the record and the owner key (one Cluster slot), so each
step stays one script.

Entries whose call is over (record ``ended`` or gone: ended by the reaper
that found it, or by an owner whose release failed) are removed by the
listing itself, in the script that finds them so. Each lapsed lease is
therefore read a bounded number of times: the work of a reaper pass follows
the calls whose owners died, not the calls that live.

Rules: nothing here reads a whole record; the listing returns the state
field's JSON and the holder, and the caller reads the record of the few it
reaps.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, cast

from telephony_edge.coord.base import DEFAULT_LEASE_TTL, LapsedLease
from telephony_edge.coord.redis_common import PRELUDE

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.commands.core import AsyncScript

# KEYS: owner, leases, holders. ARGV: worker, ttl_ms, call_id.
_CLAIM_OWNER = (
    PRELUDE
    + """
local current = redis.call('GET', KEYS[1])
if current and current ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('ZADD', KEYS[2], now_ms() + tonumber(ARGV[2]), ARGV[3])
redis.call('HSET', KEYS[3], ARGV[3], ARGV[1])
return 1
"""
)

# KEYS: leases, owner keys of one bucket. ARGV: worker, ttl_ms, their call ids. Returns
# the 1-based positions of the calls whose lease the worker held (and now renewed).
_RENEW_OWNERS = (
    PRELUDE
    + """
local renewed, scores = {}, {}
local expiry = now_ms() + tonumber(ARGV[2])
for i = 2, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[1] then
    redis.call('PEXPIRE', KEYS[i], ARGV[2])
    renewed[#renewed + 1] = i - 1
    scores[#scores + 1] = expiry
    scores[#scores + 1] = ARGV[i + 1]
  end
end
for first = 1, #scores, 2000 do  -- in chunks: Lua's unpack has a limit
  redis.call('ZADD', KEYS[1], unpack(scores, first, math.min(first + 1999, #scores)))
end
return renewed
"""
)

# KEYS: owner, leases, holders. ARGV: worker, call_id.
_RELEASE_OWNER = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('HDEL', KEYS[3], ARGV[2])
return 1
"""

# KEYS: leases. ARGV: lapsed_for_ms, limit, after score|'', after id. Up to limit
# {id, score} of leases that expired at least lapsed_for ago, after the cursor, oldest first.
_LAPSED_IDS = (
    PRELUDE
    + """
local cutoff = string.format('%.17g', now_ms() - tonumber(ARGV[1]))
local after = ARGV[3] ~= '' and tonumber(ARGV[3]) or nil
local limit = tonumber(ARGV[2])
local out, offset = {}, 0
while #out < 2 * limit do
  local chunk = redis.call('ZRANGEBYSCORE', KEYS[1], after and ARGV[3] or '-inf', cutoff,
    'WITHSCORES', 'LIMIT', offset, limit)
  for i = 1, #chunk, 2 do
    -- ties with the cursor's score (one renewal gives many) are ordered by id
    if #out < 2 * limit and (not after or tonumber(chunk[i + 1]) > after or chunk[i] > ARGV[4]) then
      out[#out + 1] = chunk[i]
      out[#out + 1] = chunk[i + 1]
    end
  end
  if #chunk < 2 * limit then break end
  offset = offset + limit
end
return out
"""
)

# KEYS: leases, holders, then per call: record, owner. ARGV: ended, call ids.
# Per call still live and unowned: {id, state JSON, holder}; calls that are over (record
# ended or gone) leave the index; a lease held again (re-claimed) is skipped.
_LAPSED_CALLS = """
local out = {}
for i = 2, #ARGV do
  local doc, owner = KEYS[2 * i - 1], KEYS[2 * i]
  local state = redis.call('HGET', doc, 'f:state')
  if not state or state == ARGV[1] then
    redis.call('ZREM', KEYS[1], ARGV[i])
    redis.call('HDEL', KEYS[2], ARGV[i])
  elseif redis.call('EXISTS', owner) == 0 then
    out[#out + 1] = {ARGV[i], state, redis.call('HGET', KEYS[2], ARGV[i]) or ''}
  end
end
return out
"""


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


async def oldest_in_buckets(
    redis: Redis, script: AsyncScript, keys: list[str], age: float, limit: int, after: str | None
) -> tuple[list[tuple[str, str]], str | None]:
    """The oldest ``limit`` members at least ``age`` old of the per-bucket sorted sets ``keys``.

    Scores are times (ms, server clock); ``after`` is the cursor a previous read
    returned (``score|id``). Returns (call id, its key) pairs, oldest first, and
    the cursor of the next ones (None: no more). One pipelined round trip.
    """
    if limit < 1:
        raise ValueError("limit must be at least 1")
    score, _, after_id = (after or "").partition("|")
    async with redis.pipeline(transaction=False) as pipe:
        for key in keys:
            await script(keys=[key], args=[_ms(age), limit, score, after_id], client=pipe)
        found: list[list[str]] = await pipe.execute()
    merged = sorted(
        (float(flat[i + 1]), flat[i], flat[i + 1], key)
        for key, flat in zip(keys, found, strict=True)
        for i in range(0, len(flat), 2)
    )
    if not merged:
        return [], None
    batch = merged[:limit]
    more = len(merged) > limit or any(len(flat) == 2 * limit for flat in found)
    cursor = f"{batch[-1][2]}|{batch[-1][1]}" if more else None
    return [(call_id, key) for _, call_id, _, key in batch], cursor


class RedisLeases:
    """Ownership (leases) of :class:`~telephony_edge.coord.redis.RedisCoordinator`.

    A mixin: the coordinator provides the client, the key layout and the
    ``ended`` state's JSON.
    """

    _redis: Redis
    _buckets: int
    _ended: str

    def _bucket_tag(self, bucket: int) -> str:
        raise NotImplementedError

    def _call_tag(self, call_id: str) -> str:
        raise NotImplementedError

    def _init_leases(self) -> None:
        script = self._redis.register_script
        self._claim_owner: AsyncScript = script(_CLAIM_OWNER)
        self._renew_owners: AsyncScript = script(_RENEW_OWNERS)
        self._release_owner: AsyncScript = script(_RELEASE_OWNER)
        self._lapsed_ids: AsyncScript = script(_LAPSED_IDS)
        self._lapsed_calls: AsyncScript = script(_LAPSED_CALLS)

    def _owner_key(self, call_id: str) -> str:
        return f"{self._call_tag(call_id)}:owner:{call_id}"

    def _lease_keys(self, call_id: str) -> list[str]:
        """The owner key and its bucket's lease index: one slot."""
        tag = self._call_tag(call_id)
        return [f"{tag}:owner:{call_id}", f"{tag}:leases", f"{tag}:holders"]

    async def claim_owner(
        self, call_id: str, worker_id: str, *, ttl: float = DEFAULT_LEASE_TTL
    ) -> bool:
        claimed = await self._claim_owner(
            keys=self._lease_keys(call_id), args=[worker_id, _ms(ttl), call_id]
        )
        return bool(claimed)

    async def renew_leases(
        self, worker_id: str, calls: Mapping[str, str | None], ttl: float
    ) -> set[str]:
        if not calls:
            return set()
        ttl_ms = _ms(ttl)
        # Step 1: the leases, one script per bucket (one slot each), in one round trip.
        by_bucket: dict[str, list[str]] = {}
        for call_id in calls:
            by_bucket.setdefault(self._call_tag(call_id), []).append(call_id)
        async with self._redis.pipeline(transaction=False) as pipe:
            for tag, ids in by_bucket.items():
                await self._renew_owners(
                    keys=[f"{tag}:leases", *(f"{tag}:owner:{c}" for c in ids)],
                    args=[worker_id, ttl_ms, *ids],
                    client=pipe,
                )
            replies: list[list[int]] = await pipe.execute()
        renewed = {
            ids[i - 1]
            for ids, reply in zip(by_bucket.values(), replies, strict=True)
            for i in reply
        }
        # Step 2: the slots of the calls still ours, one script per agent, one round trip.
        by_agent: dict[str, list[str]] = {}
        for call_id in renewed:
            agent_id = calls[call_id]
            if agent_id is not None:
                by_agent.setdefault(agent_id, []).append(call_id)
        if by_agent:
            await self._renew_agent_slots(by_agent, ttl_ms)
        return renewed

    async def _renew_agent_slots(self, by_agent: Mapping[str, list[str]], ttl_ms: int) -> None:
        raise NotImplementedError

    async def owner_of(self, call_id: str) -> str | None:
        return cast("str | None", await self._redis.get(self._owner_key(call_id)))

    async def owners_of(self, call_ids: Collection[str]) -> dict[str, str | None]:
        ids = list(call_ids)
        if not ids:
            return {}
        async with self._redis.pipeline(transaction=False) as pipe:
            for call_id in ids:
                pipe.get(self._owner_key(call_id))
            owners: list[str | None] = await pipe.execute()
        return dict(zip(ids, owners, strict=True))

    async def release_owner(self, call_id: str, worker_id: str) -> bool:
        released = await self._release_owner(
            keys=self._lease_keys(call_id), args=[worker_id, call_id]
        )
        return bool(released)

    async def lapsed_leases(
        self, lapsed_for: float, *, limit: int = 100, after: str | None = None
    ) -> tuple[list[LapsedLease], str | None]:
        # Step 1: each bucket's next lapsed ids (none, mostly), in one round trip.
        indexes = [f"{self._bucket_tag(b)}:leases" for b in range(self._buckets)]
        batch, cursor = await oldest_in_buckets(
            self._redis, self._lapsed_ids, indexes, lapsed_for, limit, after
        )
        # Step 2: the state and holder of those, the ones over dropped, in one round trip.
        by_tag: dict[str, list[str]] = {}
        for call_id, index in batch:
            by_tag.setdefault(index.removesuffix(":leases"), []).append(call_id)
        async with self._redis.pipeline(transaction=False) as pipe:
            for tag, ids in by_tag.items():
                keys = [f"{tag}:leases", f"{tag}:holders"]
                for call_id in ids:
                    keys += (f"{tag}:call:{call_id}", f"{tag}:owner:{call_id}")
                await self._lapsed_calls(keys=keys, args=[self._ended, *ids], client=pipe)
            replies: list[list[list[str]]] = await pipe.execute()
        live = {
            call_id: LapsedLease(call_id=call_id, state=json.loads(state), holder=holder or None)
            for reply in replies
            for call_id, state, holder in reply
        }
        return [live[call_id] for call_id, _ in batch if call_id in live], cursor


__all__ = ["RedisLeases", "oldest_in_buckets"]
