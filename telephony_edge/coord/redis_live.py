"""A call that outlives its worker, in Redis: the live state and the takeover.

Theory of operation
-------------------
A live call's owner writes what another worker needs to carry the call on
(:meth:`~telephony_edge.coord.base.Coordinator.put_live`) into three keys with
the call's bucket tag, so the record, its lease and its live state share one
Cluster slot:

=====================================  ========  ==========================================
key                                    type      holds / expiry
=====================================  ========  ==========================================
``P{calls:B}:live:<call_id>``          string    the owner's last document (JSON), ``PX``
                                                 the caller's ttl from each write
``P{calls:B}:livechat:<call_id>``      list      the chat entries (JSON), appended; the
                                                 ttl from each append
``P{calls:B}:livefn:<call_id>``        list      the function calls, likewise
=====================================  ========  ==========================================

``PUT_LIVE`` writes the calls of one bucket in one script, each only while
the record's ``f:owner`` is the writer (a call taken over is its new owner's
to write); the calls of all buckets go in one pipelined round trip. Per call
written: ``HGET``, ``SET``, and an ``RPUSH`` + ``PEXPIRE`` per list that
grew. The lists' ttl runs from their last append: the callers' ttl is longer
than the longest call, so a list outlives its call however long it is quiet.

``TAKE_OVER`` is the one step that moves a call: the record live and at the
expected ``f:generation``, then its ``f:owner``, the next generation and the
changes, the version,
and the lease (``owner`` key, the leases index and its holder, as
:mod:`~telephony_edge.coord.redis_leases` keeps them) given to the new owner
whoever held it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from telephony_edge.coord.base import (
    LIVE_STATES,
    Conflict,
    Document,
    LiveState,
    LiveUpdate,
    json_text,
)
from telephony_edge.coord.redis_common import PRELUDE, document_of, field_args, ms

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.commands.core import AsyncScript

# KEYS: doc, owner, leases, holders. ARGV: worker JSON, worker, ttl_ms, call_id,
# generation JSON, the next generation JSON, the live states' JSON (2), field, json, ...
_TAKE_OVER = (
    PRELUDE
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return {'missing'} end
local state = redis.call('HGET', KEYS[1], 'f:state')
local generation = redis.call('HGET', KEYS[1], 'f:generation') or '0'
if (state ~= ARGV[7] and state ~= ARGV[8]) or generation ~= ARGV[5] then
  return {'conflict', redis.call('HGETALL', KEYS[1])}
end
local fields = {'f:owner', ARGV[1], 'f:generation', ARGV[6]}
for i = 9, #ARGV, 2 do
  fields[#fields + 1] = 'f:' .. ARGV[i]
  fields[#fields + 1] = ARGV[i + 1]
end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('HINCRBY', KEYS[1], 'v', 1)
redis.call('PERSIST', KEYS[1])
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
redis.call('ZADD', KEYS[3], now_ms() + tonumber(ARGV[3]), ARGV[4])
redis.call('HSET', KEYS[4], ARGV[4], ARGV[2])
return {'ok', redis.call('HGETALL', KEYS[1])}
"""
)

# KEYS: per call, its record, live, livechat, livefn. ARGV: writer JSON, ttl_ms, then per
# call: document JSON, n, n chat entries, m, m function calls. Returns the 1-based
# positions of the calls written (those whose record names the writer as owner).
_PUT_LIVE = """
local written, a = {}, 3
local function append(key, first, n)
  if n == 0 then return end
  for from = first, first + n - 1, 500 do  -- in chunks: Lua's unpack has a limit
    redis.call('RPUSH', key, unpack(ARGV, from, math.min(from + 499, first + n - 1)))
  end
  redis.call('PEXPIRE', key, ARGV[2])
end
for i = 1, #KEYS, 4 do
  local doc = ARGV[a]
  local n_chat = tonumber(ARGV[a + 1])
  local n_fn = tonumber(ARGV[a + 2 + n_chat])
  if redis.call('HGET', KEYS[i], 'f:owner') == ARGV[1] then
    redis.call('SET', KEYS[i + 1], doc, 'PX', ARGV[2])
    append(KEYS[i + 2], a + 2, n_chat)
    append(KEYS[i + 3], a + 3 + n_chat, n_fn)
    written[#written + 1] = (i + 3) / 4
  end
  a = a + 3 + n_chat + n_fn
end
return written
"""


def _live_args(update: LiveUpdate) -> list[str]:
    return [
        json_text(update.doc),
        str(len(update.chat)),
        *(json_text(entry) for entry in update.chat),
        str(len(update.function_calls)),
        *(json_text(entry) for entry in update.function_calls),
    ]


class RedisLive:
    """Live state and takeovers of :class:`~telephony_edge.coord.redis.RedisCoordinator`.

    A mixin: the coordinator provides the client and the key layout.
    """

    _redis: Redis

    def _call_tag(self, call_id: str) -> str:
        raise NotImplementedError

    def _init_live(self) -> None:
        script = self._redis.register_script
        self._take_over: AsyncScript = script(_TAKE_OVER)
        self._put_live: AsyncScript = script(_PUT_LIVE)

    def _live_keys(self, call_id: str) -> list[str]:
        """The call's record, live document, chat and function calls: one slot."""
        tag = self._call_tag(call_id)
        return [
            f"{tag}:call:{call_id}",
            f"{tag}:live:{call_id}",
            f"{tag}:livechat:{call_id}",
            f"{tag}:livefn:{call_id}",
        ]

    async def take_over(
        self,
        call_id: str,
        worker_id: str,
        *,
        generation: int,
        ttl: float,
        changes: Mapping[str, Any] | None = None,
    ) -> Document | None:
        tag = self._call_tag(call_id)
        reply = await self._take_over(
            keys=[
                f"{tag}:call:{call_id}",
                f"{tag}:owner:{call_id}",
                f"{tag}:leases",
                f"{tag}:holders",
            ],
            args=[
                json_text(worker_id),
                worker_id,
                ms(ttl),
                call_id,
                json_text(generation),
                json_text(generation + 1),
                *(json_text(state) for state in LIVE_STATES),
                *field_args(changes or {}),
            ],
        )
        if reply[0] == "missing":
            return None
        doc = document_of(reply[1])
        if reply[0] == "conflict":
            raise Conflict(doc)
        return doc

    async def put_live(
        self, worker_id: str, updates: Mapping[str, LiveUpdate], ttl: float
    ) -> set[str]:
        if not updates:
            return set()
        by_tag: dict[str, list[str]] = {}
        for call_id in updates:
            by_tag.setdefault(self._call_tag(call_id), []).append(call_id)
        who, ttl_ms = json_text(worker_id), ms(ttl)
        async with self._redis.pipeline(transaction=False) as pipe:
            for ids in by_tag.values():
                keys = [key for call_id in ids for key in self._live_keys(call_id)]
                args = [who, str(ttl_ms)]
                for call_id in ids:
                    args += _live_args(updates[call_id])
                await self._put_live(keys=keys, args=args, client=pipe)
            replies: list[list[int]] = await pipe.execute()
        return {
            ids[i - 1] for ids, reply in zip(by_tag.values(), replies, strict=True) for i in reply
        }

    async def get_live(self, call_id: str) -> LiveState | None:
        _, live, chat, calls = self._live_keys(call_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.get(live)
            pipe.lrange(chat, 0, -1)
            pipe.lrange(calls, 0, -1)
            doc, entries, called = await pipe.execute()
        if doc is None:
            return None
        return LiveState(
            json.loads(doc), [json.loads(e) for e in entries], [json.loads(c) for c in called]
        )

    async def drop_live(self, call_id: str) -> None:
        await self._redis.delete(*self._live_keys(call_id)[1:])


__all__ = ["RedisLive"]
