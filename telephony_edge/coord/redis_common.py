"""What the Redis coordinator's parts share: the Lua prelude (the server's clock), expiry
with a zset's latest deadline, milliseconds for ``PX``, and the errors that mean "away"."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from typing import Any

from redis.exceptions import RedisError

from telephony_edge.coord.base import Document, json_text

#: ``XREAD BLOCK``: short, so closing or losing the connection is noticed soon.
BLOCK_MS = 1000
BLOCK_S = BLOCK_MS / 1000
PING_TIMEOUT = 2.0
CONNECTION_ERRORS = (RedisError, OSError, asyncio.TimeoutError)


def document_of(fields: Mapping[str, str] | Sequence[str]) -> Document:
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


def field_args(data: Mapping[str, Any]) -> list[str]:
    """Top-level fields as ``name, JSON`` pairs, normalised as JSON would (keys become str)."""
    args: list[str] = []
    for name, value in json.loads(json_text(dict(data))).items():
        args += (name, json_text(value))
    return args


def ms(seconds: float) -> int:
    """A positive expiry in milliseconds (``PX 0`` is an error; memory treats 0 as expired)."""
    return max(1, round(seconds * 1000))


PRELUDE = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
end
"""


# Expire a zset of deadlines (and its companion hash) with its latest deadline.
EXPIRE_WITH_LATEST = """
local function expire_with_latest(zset, other, now)
  local last = redis.call('ZRANGE', zset, -1, -1, 'WITHSCORES')
  if #last == 0 then return end
  local ttl = math.ceil(tonumber(last[2]) - now) + 1
  redis.call('PEXPIRE', zset, ttl)
  if other then redis.call('PEXPIRE', other, ttl) end
end
"""
