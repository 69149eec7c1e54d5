"""Control messages between workers in Redis: one inbox stream per worker.

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
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from collections.abc import AsyncGenerator, Mapping
from typing import Any, cast

from redis.asyncio import Redis

from telephony_edge.coord.base import (
    ControlMessage,
    json_text,
)
from telephony_edge.coord.redis_common import (
    BLOCK_MS,
    BLOCK_S,
    CONNECTION_ERRORS,
    PING_TIMEOUT,
    ms,
)

log = logging.getLogger(__name__)


class RedisControl:
    """Control messages of :class:`~telephony_edge.coord.redis.RedisCoordinator` (a mixin)."""

    _redis: Redis
    _prefix: str
    _inbox_size: int
    _inbox_ttl: int

    async def owner_of(self, call_id: str) -> str | None:
        raise NotImplementedError

    def _reply_key(self, token: str) -> str:
        return f"{self._prefix}{{reply:{token}}}:r"

    def _inbox_key(self, worker_id: str) -> str:
        return f"{self._prefix}{{worker:{worker_id}}}:inbox"

    # -- control messages --------------------------------------------------------------------

    async def publish_control(self, call_id: str, message: Mapping[str, Any]) -> bool:
        owner = await self.owner_of(call_id)
        if owner is None:
            return False
        await self.send_control(owner, call_id, message)
        return True

    async def send_control(self, worker_id: str, call_id: str, message: Mapping[str, Any]) -> None:
        inbox = self._inbox_key(worker_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.xadd(inbox, {"c": call_id, "m": json_text(dict(message))}, maxlen=self._inbox_size)
            pipe.pexpire(inbox, self._inbox_ttl)
            await pipe.execute()

    async def send_reply(self, token: str, reply: Mapping[str, Any], *, ttl: float) -> None:
        key = self._reply_key(token)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.rpush(key, json_text(dict(reply)))
            pipe.pexpire(key, ms(ttl))
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
            popped = await self._redis.blpop([key], timeout=max(0.01, min(remaining, BLOCK_S)))
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
                            await conn.xread({inbox: "0-0"}, count=16, block=BLOCK_MS),
                        )
                        batch.extend(entry for _, entries in reply or () for entry in entries)
                    backoff = 0.1
                except CONNECTION_ERRORS as exc:
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
                with contextlib.suppress(*CONNECTION_ERRORS):
                    await asyncio.wait_for(conn.xdel(inbox, delivered), PING_TIMEOUT)
            with contextlib.suppress(*CONNECTION_ERRORS):
                await conn.aclose()
