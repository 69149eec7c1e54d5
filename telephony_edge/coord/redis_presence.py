"""Per-agent concurrency slots and worker heartbeats in Redis: deadlines in sorted sets,
pruned on the server's clock, keys expiring with their latest member (see the key layout in
:mod:`telephony_edge.coord.redis`)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from telephony_edge.coord.base import (
    DEFAULT_SLOT_TTL,
    json_text,
)
from telephony_edge.coord.redis_common import (
    EXPIRE_WITH_LATEST,
    PRELUDE,
)

# KEYS: slots. ARGV: call_id, limit, ttl_ms.
_ACQUIRE_SLOT = (
    PRELUDE
    + EXPIRE_WITH_LATEST
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
    PRELUDE
    + EXPIRE_WITH_LATEST
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
    PRELUDE
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
    PRELUDE
    + EXPIRE_WITH_LATEST
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
    PRELUDE
    + _PRUNE_WORKERS
    + """
prune(KEYS[1], KEYS[2], now_ms())
return redis.call('HGETALL', KEYS[1])
"""
)


class RedisPresence:
    """Slots and heartbeats of :class:`~telephony_edge.coord.redis.RedisCoordinator` (a mixin)."""

    _redis: Redis
    _prefix: str

    def _init_presence(self) -> None:
        script = self._redis.register_script
        self._acquire_slot: AsyncScript = script(_ACQUIRE_SLOT)
        self._renew_slots: AsyncScript = script(_RENEW_SLOTS)
        self._slots_in_use: AsyncScript = script(_SLOTS_IN_USE)
        self._heartbeat: AsyncScript = script(_HEARTBEAT)
        self._live_workers: AsyncScript = script(_LIVE_WORKERS)

    def _slots_key(self, agent_id: str) -> str:
        return f"{self._prefix}{{agent:{agent_id}}}:slots"

    def _worker_keys(self) -> list[str]:
        return [f"{self._prefix}{{workers}}:info", f"{self._prefix}{{workers}}:expiry"]

    async def _renew_agent_slots(self, by_agent: Mapping[str, list[str]], ttl_ms: int) -> None:
        """Renew the slots of these calls of each agent: one script per agent, one round trip."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for agent_id, ids in by_agent.items():
                await self._renew_slots(
                    keys=[self._slots_key(agent_id)], args=[ttl_ms, *ids], client=pipe
                )
            await pipe.execute()

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
