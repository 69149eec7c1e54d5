"""The SIP shell's sender: every :class:`~telephony_edge.sip.ua.Send`, a named next hop resolved.

Theory of operation
-------------------
The UA says where each message goes; :class:`Outbound` puts it on the wire.
A destination that is an address is sent at once. One the UA marks with a
URI (``Send.uri``: a route or Contact that names a host) is looked up first
(RFC 3263, :mod:`telephony_edge.sip.resolve`): from the cache when it is there,
otherwise the message waits (at most ``MAX_WAITING`` per name) while one
lookup per name runs in a task of its own, and is sent when it answers.

Over TLS the server's certificate must name the URI's host (RFC 5922 §4), or,
for an address, the name the UA gives (``server_name``: an outbound call's
proxy); a connection that cannot be opened is the shell's to report
(``send_now`` gets the call).

The send loop never waits for DNS, so a lookup that hangs or fails delays
nothing but the messages for that name: other calls' retransmissions and
timers go on (the UA's own clock drives them, not the sends). When a name
does not resolve, every waiting message is dropped and ``unreachable`` is
told once for each call they belonged to; the UA then sends that call's
requests to the flow its INVITE came from and ends the call.

Rules: nothing here raises into the caller; ``send`` never awaits.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from telephony_edge.sip.resolve import (
    Address,
    DnsCache,
    SipResolver,
    Target,
    Unresolvable,
    target_of,
)

log = logging.getLogger(__name__)

MAX_WAITING = 64  # messages held per name while it is looked up

SendNow = Callable[[bytes, Address, str, str | None, str | None], None]
"""data, address, transport, the TLS server's name, the UA's call ref"""
Unreachable = Callable[[str, str], None]  # the UA's call ref, a short reason


class Outbound:
    """See the module docstring."""

    def __init__(
        self,
        resolver: SipResolver,
        send_now: SendNow,
        unreachable: Unreachable,
        cache: DnsCache | None = None,
    ) -> None:
        self.resolver = resolver
        self.cache = cache or DnsCache()
        self._send_now = send_now
        self._unreachable = unreachable
        self._waiting: dict[Target, list[tuple[bytes, str, str | None]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def send(
        self,
        data: bytes,
        dest: Address,
        transport: str,
        uri: str | None,
        call: str | None,
        server_name: str | None = None,
    ) -> None:
        """Send ``data`` to ``dest``, or to what ``uri`` resolves to when it is given."""
        if uri is None:
            self._send_now(data, dest, transport, server_name, call)
            return
        try:
            target = target_of(uri, transport)
        except ValueError:
            self._fail([call], "not a SIP URI")
            return
        now = asyncio.get_running_loop().time()
        known = self.cache.get(target, now)
        if isinstance(known, Unresolvable):
            self._fail([call], str(known))
        elif known is not None:
            self._send_now(data, known, transport, target.host, call)
        else:
            self._wait(target, (data, transport, call))

    def _wait(self, target: Target, message: tuple[bytes, str, str | None]) -> None:
        waiting = self._waiting.get(target)
        if waiting is None:
            self._waiting[target] = [message]
            task = asyncio.ensure_future(self._lookup(target))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        elif len(waiting) < MAX_WAITING:
            waiting.append(message)

    async def _lookup(self, target: Target) -> None:
        loop = asyncio.get_running_loop()
        try:
            address, ttl = await self.resolver.lookup(target)
        except Unresolvable as exc:
            self.cache.put(target, exc, 0.0, loop.time())
            waiting = self._waiting.pop(target, [])
            self._fail(list(dict.fromkeys(call for _, _, call in waiting)), str(exc))
            return
        except Exception:  # a resolver bug: the messages are lost, as a datagram is
            log.exception("SIP next hop lookup failed", extra={"host": target.host[:100]})
            self._waiting.pop(target, None)
            return
        self.cache.put(target, address, ttl, loop.time())
        for data, transport, call in self._waiting.pop(target, []):
            self._send_now(data, address, transport, target.host, call)

    def _fail(self, calls: list[str | None], reason: str) -> None:
        for call in calls:
            if call is not None:
                self._unreachable(call, reason)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._waiting.clear()
