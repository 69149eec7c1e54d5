"""Reading the Redis index of live calls a page at a time, and the calls still setting up.

Theory of operation
-------------------
=====================================  ========  ==========================================
key                                    type      holds
=====================================  ========  ==========================================
``P{calls:B}:active``                  zset      call ids of bucket B not ended, all scored
                                                 0, so ``ZRANGE … BYLEX`` pages them by id
``P{calls:B}:created``                 zset      call id → when its record was created
                                                 (ms, server clock); no TTL, each entry
                                                 read once after its age, then dropped
=====================================  ========  ==========================================

Paging (``page_active_calls``): each bucket's next ids after the cursor, a
few per bucket (``ZRANGE (<after> + BYLEX LIMIT``), merged by id up to the
lowest last id of the buckets that had more (a k-way merge: nothing below
that frontier is missing), then only those records are read (the whole
hash, or ``HMGET`` of the fields asked for), by one script per bucket that
returns one JSON text per record: parsing a reply's many small strings in
redis-py is what held the event loop longest (about 20 ms a page of 100),
and decoding yields every ``DECODE_BATCH`` records. Each page costs what it
returns, whatever the number of live calls. An index scored by creation
time (written before this layout) is re-scored 0 by the page script the
first time it reads it.

Calls still setting up (``aged_calls``): ``CREATE_CALL`` files every new
record in ``created`` in the same script; a reader asks for the entries at
least ``age`` old (``ZRANGEBYSCORE``) and, per bucket in one script, keeps
those whose record is still in the state asked for and drops the others
(moved on, ended, expired). Each call is read once or twice in its life,
however many are live.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Any

from telephony_edge.coord.base import CALL_ID_KEY, Document, json_text
from telephony_edge.coord.redis_leases import _LAPSED_IDS, oldest_in_buckets

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.commands.core import AsyncScript

#: Records decoded between two yields to the event loop (a whole record: about 0.03 ms).
DECODE_BATCH = 50
#: Ids older than an age, after a (score, id) cursor: the lease index's listing.
_IDS_OLDER_THAN = _LAPSED_IDS

# KEYS: active index. ARGV: after id|'', count.
_PAGE_IDS = """
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
if #last > 0 and tonumber(last[2]) ~= 0 then
  local ids = redis.call('ZRANGE', KEYS[1], 0, -1)
  for i = 1, #ids do redis.call('ZADD', KEYS[1], 0, ids[i]) end
end
local min = ARGV[1] == '' and '-' or '(' .. ARGV[1]
return redis.call('ZRANGE', KEYS[1], min, '+', 'BYLEX', 'LIMIT', 0, tonumber(ARGV[2]))
"""

# KEYS: created index, then the records. ARGV: state JSON, their ids. Returns the ids
# still in that state; the others leave the index.
_STILL_IN = """
local out = {}
for i = 2, #ARGV do
  if redis.call('HGET', KEYS[i], 'f:state') == ARGV[1] then
    out[#out + 1] = ARGV[i]
  else
    redis.call('ZREM', KEYS[1], ARGV[i])
  end
end
return out
"""


# KEYS: records of one bucket. ARGV: 'v', 'f:<field>'... (none: whole records). One JSON
# text per record ('' if gone): a flat list from HGETALL, or HMGET's values (false: none).
# One string per record, because parsing a reply's many small strings is what costs the
# client most (redis-py parses each in Python between two yields to the event loop).
_READ_RECORDS = """
local out = {}
for i = 1, #KEYS do
  local flat
  if #ARGV == 0 then
    flat = redis.call('HGETALL', KEYS[i])
  else
    flat = redis.call('HMGET', KEYS[i], unpack(ARGV))
  end
  if #flat == 0 or flat[1] == false then out[i] = '' else out[i] = cjson.encode(flat) end
end
return out
"""


class RedisIndex:
    """Paged reads of the live calls' index, and the setup index, of the Redis coordinator."""

    _redis: Redis
    _buckets: int

    def _bucket_tag(self, bucket: int) -> str:
        raise NotImplementedError

    def _init_index(self) -> None:
        script = self._redis.register_script
        self._page_ids: AsyncScript = script(_PAGE_IDS)
        self._ids_older_than: AsyncScript = script(_IDS_OLDER_THAN)
        self._still_in: AsyncScript = script(_STILL_IN)
        self._read_records: AsyncScript = script(_READ_RECORDS)

    async def page_active_calls(
        self,
        *,
        where: Mapping[str, Any] | None = None,
        after: str | None = None,
        limit: int = 100,
        fields: Collection[str] | None = None,
    ) -> tuple[list[tuple[str, Document]], str | None]:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        wanted = dict(where or {})
        names = None if fields is None else sorted({*fields, *wanted, CALL_ID_KEY})
        tags = [self._bucket_tag(b) for b in range(self._buckets)]
        per_bucket = max(4, -(-(limit + 1) * 2 // self._buckets))
        page: list[tuple[str, Document]] = []
        cursor = after
        while len(page) <= limit:
            async with self._redis.pipeline(transaction=False) as pipe:
                for tag in tags:
                    await self._page_ids(
                        keys=[f"{tag}:active"], args=[cursor or "", per_bucket], client=pipe
                    )
                found: list[list[str]] = await pipe.execute()
            full = [ids[-1] for ids in found if len(ids) == per_bucket]
            frontier = min(full) if full else None
            candidates = sorted(
                (call_id, tag)
                for tag, ids in zip(tags, found, strict=True)
                for call_id in ids
                if frontier is None or call_id <= frontier
            )
            if not candidates:
                break
            read = 0
            while read < len(candidates) and len(page) <= limit:
                # as many records as the page still needs, were they all to match
                chunk = candidates[read : read + limit + 1 - len(page)]
                read += len(chunk)
                page += await self._matching(chunk, names, wanted)
            cursor = candidates[read - 1][0]
            if frontier is None and read == len(candidates):
                break  # every bucket read to its end
        more = len(page) > limit
        page = page[:limit]
        return page, (page[-1][0] if more else None)

    async def _matching(
        self, chunk: list[tuple[str, str]], names: list[str] | None, wanted: Mapping[str, Any]
    ) -> list[tuple[str, Document]]:
        """The records of ``chunk`` ((call id, bucket tag) pairs) that match ``wanted``."""
        by_tag: dict[str, list[str]] = {}
        for call_id, tag in chunk:
            by_tag.setdefault(tag, []).append(call_id)
        fields = [] if names is None else ["v", *(f"f:{n}" for n in names)]
        async with self._redis.pipeline(transaction=False) as pipe:
            for tag, ids in by_tag.items():
                await self._read_records(
                    keys=[f"{tag}:call:{c}" for c in ids], args=fields, client=pipe
                )
            replies: list[list[str]] = await pipe.execute()
        texts = {
            call_id: text
            for ids, reply in zip(by_tag.values(), replies, strict=True)
            for call_id, text in zip(ids, reply, strict=True)
        }
        records = [texts[call_id] for call_id, _ in chunk]
        out = []
        for n, ((call_id, _), stored) in enumerate(zip(chunk, records, strict=True), 1):
            if n % DECODE_BATCH == 0:
                await asyncio.sleep(0)  # whole records are decoded a few dozen at a time
            doc = _read(stored, names)
            if (
                doc is not None
                and isinstance(doc.data.get(CALL_ID_KEY), str)
                and all(doc.data.get(k) == v for k, v in wanted.items())
            ):
                out.append((call_id, doc))
        return out

    async def aged_calls(
        self, state: str, age: float, *, limit: int = 100, after: str | None = None
    ) -> tuple[list[str], str | None]:
        indexes = [f"{self._bucket_tag(b)}:created" for b in range(self._buckets)]
        batch, cursor = await oldest_in_buckets(
            self._redis, self._ids_older_than, indexes, age, limit, after
        )
        by_index: dict[str, list[str]] = {}
        for call_id, index in batch:
            by_index.setdefault(index, []).append(call_id)
        async with self._redis.pipeline(transaction=False) as pipe:
            for index, ids in by_index.items():
                tag = index.removesuffix(":created")
                await self._still_in(
                    keys=[index, *(f"{tag}:call:{c}" for c in ids)],
                    args=[json_text(state), *ids],
                    client=pipe,
                )
            replies: list[list[str]] = await pipe.execute()
        still = {call_id for reply in replies for call_id in reply}
        return [call_id for call_id, _ in batch if call_id in still], cursor


def _read(text: str, names: list[str] | None) -> Document | None:
    """A record from :data:`_READ_RECORDS`' text for it; None if it is gone."""
    if not text:
        return None
    flat = json.loads(text)
    if names is None:
        stored = dict(zip(flat[::2], flat[1::2], strict=True))
        data = {k[2:]: json.loads(v) for k, v in stored.items() if k.startswith("f:")}
        return Document(data=data, version=int(stored.get("v", 0)))
    version, *values = flat
    data = {n: json.loads(v) for n, v in zip(names, values, strict=True) if v is not False}
    return Document(data=data, version=int(version))


__all__ = ["RedisIndex"]
