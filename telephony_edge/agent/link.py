"""The edge's WebSocket client of the agent core (see AGENT_PROTOCOL.md).

One link per call. :meth:`AgentLink.open` connects, sends ``initiate`` and
waits for ``onready``, each step bounded; what the core sends before
``onready`` (bounded in count) is kept and handed out by
:meth:`AgentLink.recv` afterwards, so nothing is lost. A keep-alive
``ping`` message goes out on a timer, and WebSocket pings (aiohttp's
heartbeat) notice a half-open core within seconds: the link then reads as
closed. Failures surface
as :class:`AgentLinkError` with the stage that failed, so the call can end
with ``call_status`` ``error`` and a message that says what happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import urllib.parse
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from telephony_edge import badinput
from telephony_edge.agent import messages
from telephony_edge.agent.pool import PoolChoice
from telephony_edge.wsframe import OP_BINARY, masked_frame

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 4 * 1024 * 1024
#: bytes queued toward the core past which audio waits for the socket to drain (aiohttp's
#: own writer waits only once the transport is paused, at its 64 KiB high-water mark)
SEND_NOW_LIMIT = 32 * 1024
BAD_INPUT = "agent-core"  # the bad-input source of what the core sends
_GONE = frozenset(
    {
        aiohttp.WSMsgType.CLOSE,
        aiohttp.WSMsgType.CLOSING,
        aiohttp.WSMsgType.CLOSED,
        aiohttp.WSMsgType.ERROR,
    }
)


class AgentLinkError(Exception):
    """The agent core could not be reached, refused the call, or dropped it."""

    def __init__(self, stage: str, message: str) -> None:
        super().__init__(f"agent core {stage}: {message}")
        self.stage = stage


@dataclass(frozen=True, slots=True)
class AgentMessage:
    """A text message from the core (everything but audio)."""

    method: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class LinkClosed:
    """The core closed the link (``code``: its WebSocket close code, if any)."""

    code: int | None


AgentEvent = bytes | AgentMessage | LinkClosed


@dataclass(frozen=True, slots=True)
class LinkTimeouts:
    connect_s: float = 5.0
    ready_s: float = 10.0
    ping_interval_s: float = 10.0
    heartbeat_s: float = 5.0  # WebSocket ping; no pong within half of it: the core is gone
    max_early_messages: int = 500  # what the core may send before onready


class AgentLink:
    """Client side of one agent-core session."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        url: str,
        timeouts: LinkTimeouts = LinkTimeouts(),
        *,
        call_id: str = "",
        endpoints: PoolChoice | None = None,
    ) -> None:
        """``endpoints``: a region's pool to walk instead of the one ``url``."""
        self._session = session
        self.url = url
        self._endpoints = endpoints
        self._holds = False  # counted in the pool's load of ``url``
        self._timeouts = timeouts
        self._call_id = call_id
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._transport: asyncio.Transport | None = None  # the socket's, for send_audio_now
        self._early: deque[AgentEvent] = deque()
        self._ping_task: asyncio.Task[None] | None = None

    @property
    def closed(self) -> bool:
        """No connection is open (never opened, closed, or dropped by the core)."""
        return self._ws is None or self._ws.closed

    async def open(self, initiate: dict[str, Any]) -> None:
        """Connect, send ``initiate``, wait for ``onready``; raise AgentLinkError otherwise."""
        self._ws = await self._connect()
        self._transport = self._ws._writer.transport  # aiohttp keeps it on the writer
        await self._ws.send_str(messages.encode(messages.INITIATE, initiate))
        try:
            await asyncio.wait_for(self._await_ready(), self._timeouts.ready_s)
        except TimeoutError:
            raise AgentLinkError(
                "initiate", f"no onready within {self._timeouts.ready_s}s"
            ) from None
        self._ping_task = asyncio.create_task(self._keepalive(), name=f"agent-ping-{self._call_id}")

    async def _connect(self) -> aiohttp.ClientWebSocketResponse:
        """Connect to the first endpoint that answers, within the call-setup budget.

        Without a pool: ``url`` alone, ``connect_s``. With one: each endpoint in
        the pool's order gets ``connect_s`` and all together at most ``ready_s``,
        so a dead core costs one attempt and never the call.
        """
        pool = self._endpoints
        urls = pool.urls if pool is not None and pool.urls else [self.url]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(self._timeouts.ready_s, self._timeouts.connect_s)
        errors: list[str] = []
        for url in urls:
            timeout = min(self._timeouts.connect_s, deadline - loop.time())
            if timeout <= 0:
                errors.append("call-setup budget spent")
                break
            if pool is not None:
                pool.attempt(url)
            try:
                ws = await asyncio.wait_for(
                    self._session.ws_connect(
                        url,
                        max_msg_size=MAX_MESSAGE_BYTES,
                        autoping=True,
                        heartbeat=self._timeouts.heartbeat_s,
                    ),
                    timeout,
                )
            except TimeoutError:
                errors.append(f"no connection within {timeout:g}s")
            except (aiohttp.ClientError, OSError) as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
            except asyncio.CancelledError:  # the call ended while connecting
                if pool is not None:
                    pool.abandoned(url)
                raise
            else:
                self.url = url
                if pool is not None:
                    pool.succeeded(url)
                    self._holds = True
                return ws
            if pool is not None:
                pool.failed(url)
                log.warning(
                    "agent core %s failed to connect (%s); trying the next",
                    url,
                    errors[-1],
                    extra={"call_id": self._call_id},
                )
        if len(urls) > 1:
            raise AgentLinkError("connect", f"no agent core of {len(urls)} answered: {errors[-1]}")
        raise AgentLinkError("connect", errors[-1])

    async def _await_ready(self) -> None:
        while True:
            event = await self._read()
            if isinstance(event, AgentMessage) and event.method == messages.ONREADY:
                return
            if isinstance(event, LinkClosed):
                raise AgentLinkError("initiate", f"closed before onready (code {event.code})")
            if len(self._early) >= self._timeouts.max_early_messages:
                self.bad_input("too many messages before onready")
                raise AgentLinkError(
                    "initiate",
                    f"more than {self._timeouts.max_early_messages} messages before onready",
                )
            self._early.append(event)

    async def recv(self) -> AgentEvent:
        """Next event from the core: agent audio, a message, or LinkClosed (then always)."""
        if self._early:
            return self._early.popleft()
        return await self._read()

    async def _read(self) -> AgentEvent:
        ws = self._ws
        assert ws is not None
        while True:
            msg = await ws.receive()
            if msg.type is aiohttp.WSMsgType.BINARY:
                data: bytes = msg.data
                return data
            if msg.type is aiohttp.WSMsgType.TEXT:
                try:
                    method, payload = messages.decode(msg.data)
                except messages.ProtocolError as exc:
                    self.bad_input(f"malformed message ({badinput.phrase(str(exc))})")
                    continue
                except RecursionError:  # JSON nested past the parser's depth
                    self.bad_input("malformed message (nested too deep)")
                    continue
                return AgentMessage(method, payload)
            if msg.type in _GONE:
                return LinkClosed(ws.close_code)

    def bad_input(self, error: str) -> None:
        """Count and warn (rate-limited, with the call id) the core's bad input: ``error``,
        a fixed phrase."""
        host = urllib.parse.urlsplit(self.url).hostname
        badinput.report(BAD_INPUT, error, host, call_id=self._call_id or None)

    def send_audio_now(self, pcm: bytes) -> bool:
        """Write one audio message now, without awaiting: True if it went.

        False when the socket is backed up, closing or not open: then
        :meth:`send_audio` sends it (waiting for a drain) or raises. This is the
        caller → agent path's per-frame cost: one masked frame written to the
        transport, not aiohttp's coroutine chain.
        """
        if not self.can_send_now():
            return False
        self._transport.write(masked_frame(pcm, OP_BINARY))  # type: ignore[union-attr]
        return True

    def can_send_now(self) -> bool:
        """Whether :meth:`send_audio_now` would send: the socket open and not backed up."""
        ws, transport = self._ws, self._transport
        return not (
            ws is None
            or transport is None
            or ws.closed
            or transport.is_closing()
            or transport.get_write_buffer_size() > SEND_NOW_LIMIT
        )

    async def send_audio(self, pcm: bytes) -> None:
        assert self._ws is not None
        await self._ws.send_bytes(pcm)

    async def send_message(self, method: str, data: dict[str, Any] | None = None) -> None:
        assert self._ws is not None
        await self._ws.send_str(messages.encode(method, data))

    async def _keepalive(self) -> None:
        ping = messages.encode(messages.PING)
        while self._ws is not None and not self._ws.closed:
            await asyncio.sleep(self._timeouts.ping_interval_s)
            with contextlib.suppress(ConnectionError, RuntimeError):
                await self._ws.send_str(ping)

    async def close(self) -> None:
        """Close the link (idempotent) and stop the keep-alive."""
        if self._holds and self._endpoints is not None:
            self._holds = False
            self._endpoints.released(self.url)
        if self._ping_task is not None:
            self._ping_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ping_task
            self._ping_task = None
        if self._ws is not None and not self._ws.closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._ws.close(), 2.0)
