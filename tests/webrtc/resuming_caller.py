"""A server-to-server WebRTC caller that outlives the edge's worker, as docs/operations.md
documents it, for the tests of many calls on a killed or draining worker.

:class:`ResumingCaller` is one call: an aiortc peer connection at a time (the client of
``test_offer``: speech then silence, host candidates on 127.0.0.1, the ``events`` data
channel). It keeps the answer's ``resume_token``; when the edge's audio stops for
:data:`SILENT_S` (the edge sends a frame every 20 ms, silence included) or the edge
says ``{"type": "move"}``, and it did not say ``hangup``, it re-offers with ``resume
{call_id, token}`` to the next worker URL (a 503 or a refused connection: the next one,
after a growing pause; 403/404/409 end the call), and closes the old connection only
once the new connection brings audio (a worker still alive takes a close for a hang-up).
Its next offer is made (ICE gathered) while the call runs, so a re-offer only posts it.
A watch that wakes late (this process stalled, the audio unread in its sockets) is no
evidence of silence.

The gap the caller hears is read from a packet capture (:class:`HeardAudio`), not from
this process's event loop: on a loaded machine the loop that decodes 20 calls' audio
runs late, while the kernel stamps each packet as it reaches the caller's port. The
edge's Opus packets for silence are a few bytes (the same encoded silence each time);
the agent's voice is several times larger, so a packet's size tells voice from silence
without the SRTP keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiortc import RTCSessionDescription

from telephony_edge.webrtc.ice import connections
from tests.sip.capture import Datagram
from tests.webrtc.test_offer import API_KEY, Client

#: how long without a frame from the edge before the caller re-offers (the documented second)
SILENT_S = 1.0
#: a watch that woke this late says the caller's own loop stalled: no evidence of silence
STALLED_S = 0.1
#: how long a new connection may take to bring the edge's audio before the caller re-offers
CONNECTING_S = 5.0
#: tries of one re-offer (each to the next URL) before the caller gives up
TRIES = 8
#: an SRTP packet of Opus larger than this carries voice (the edge's silence: 44 bytes in all)
VOICE_BYTES = 60


@dataclass
class Connection:
    """One peer connection of the call: the caller's port, and which worker answered."""

    client: Client
    url: str
    port: int
    opened_at: float  # loop time the offer was answered


@dataclass
class ResumingCaller:
    """One call through the documented server-to-server flow (see the module docstring)."""

    urls: list[str]
    http: aiohttp.ClientSession
    agent_id: str = "echo"
    call_id: str = ""
    token: str = ""
    over: bool = False  # the edge said hangup: never re-offer
    failed: str = ""  # why a re-offer was given up
    connections: list[Connection] = field(default_factory=list)
    refusals: list[int] = field(default_factory=list)  # statuses of re-offers that failed
    reasons: list[str] = field(default_factory=list)  # why each re-offer was made
    _at: int = 0
    _watch: asyncio.Task[None] | None = None
    _standby: asyncio.Future[tuple[Client, dict[str, str]]] | None = None
    _settling: asyncio.Future[None] | None = None

    @property
    def client(self) -> Client:
        return self.connections[-1].client

    async def start(self) -> None:
        """The first offer, to the first URL; returns once its audio flows."""
        status = await self._offer(resume=False)
        assert status == 200, (status, self.refusals)
        await self._heard(self.client, within=20)
        self._watch = asyncio.ensure_future(self._watching())

    async def _heard(self, client: Client, within: float) -> None:
        """Once ``client`` has had a frame from the edge (AssertionError after ``within``)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while not client.arrivals:
            assert loop.time() < deadline, "no audio from the edge"
            await asyncio.sleep(0.02)

    async def _offer(self, *, resume: bool) -> int:
        """Offer to the current URL (with ``resume``: the call's id and token); the status."""
        standby, self._standby = self._standby, None
        client, offer = await (standby if standby is not None else self._prepare())
        body: dict[str, Any] = {"agent_id": self.agent_id, "offer": offer}
        if resume:
            body["resume"] = {"call_id": self.call_id, "token": self.token}
        url = self.urls[self._at % len(self.urls)]
        try:
            async with self.http.post(
                url.rstrip("/") + "/webrtc/offer",
                json=body,
                headers={"Authorization": f"Bearer {API_KEY}"},
            ) as resp:
                status, answer = resp.status, await resp.json()
        except aiohttp.ClientError:
            status, answer = 503, {}  # the worker's port refuses: it is gone
        if status != 200:
            self.refusals.append(status)
            await client.close()
            return status
        await client.pc.setRemoteDescription(
            RTCSessionDescription(sdp=answer["sdp"], type="answer")
        )
        self.call_id, self.token = answer["call_id"], answer["resume_token"]
        [ice] = connections(client.pc)
        port = ice.local_candidates[0].port
        old = self.connections[-1].client if self.connections else None
        opened_at = asyncio.get_running_loop().time()
        self.connections.append(Connection(client, url, port, opened_at))
        self._settling = asyncio.ensure_future(self._settle(client, old))
        return status

    async def _settle(self, client: Client, old: Client | None) -> None:
        """Once the call is back (the new connection brings audio), close the old one (a live
        worker takes its close for a hang-up) and prepare the next offer: neither competes
        with the new connection's ICE and DTLS."""
        with contextlib.suppress(AssertionError):
            await self._heard(client, within=CONNECTING_S)
        if old is not None:
            await old.close()
        if client is self.client and self._standby is None and not self.over:
            self._standby = asyncio.ensure_future(self._prepare())

    @staticmethod
    async def _prepare() -> tuple[Client, dict[str, str]]:
        """A peer connection and its offer (ICE gathered), ready to be posted; its microphone
        quiet (the caller listens while the agent talks; no encoding in the test's loop)."""
        client = Client(events=True)
        client.mic.source = None
        return client, await client.offer()

    def _why_re_offer(self) -> str | None:
        """``move``, ``silence`` or None (the call is fine, or over)."""
        client = self.client
        if {"type": "hangup"} in client.messages:
            self.over = True
        if self.over:
            return None
        if {"type": "move"} in client.messages:
            return "move"
        now = asyncio.get_running_loop().time()
        if not client.arrivals:  # still connecting: the widget's wait, then the newest token
            return "silence" if now - self.connections[-1].opened_at >= CONNECTING_S else None
        return "silence" if now - client.arrivals[-1][0] >= SILENT_S else None

    async def _watching(self) -> None:
        loop = asyncio.get_running_loop()
        while not self.over and not self.failed:
            asleep = loop.time()
            await asyncio.sleep(0.02)
            if loop.time() - asleep > STALLED_S:
                continue  # this process stalled: audio may wait in its sockets, unread
            reason = self._why_re_offer()
            if reason is None:
                continue
            self.reasons.append(reason)
            for attempt in range(TRIES):
                self._at += 1
                status = await self._offer(resume=True)
                if status == 200:
                    break
                if status in (403, 404, 409):
                    self.failed = f"re-offer refused {status}"
                    return
                await asyncio.sleep(0.1 * (attempt + 1))
            else:
                self.failed = f"no worker took the re-offer: {self.refusals}"

    async def hang_up(self) -> None:
        """Say ``end`` on the data channel (a normal end), then close."""
        self.over = True
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        client = self.client
        if client.events.readyState == "open":
            client.events.send(json.dumps({"type": "end"}))
            await asyncio.sleep(0.3)

    async def close(self) -> None:
        self.over = True
        if self._watch is not None:
            self._watch.cancel()
        if self._settling is not None:
            self._settling.cancel()
        for connection in self.connections:
            await connection.client.close()
        if self._standby is not None:
            client, _ = await self._standby
            await client.close()


class HeardAudio:
    """When the edge's voice reached the callers, from a capture of the workers' media ports:
    (Unix time, the edge's port, the caller's port) of each voice packet."""

    def __init__(self, datagrams: list[Datagram]) -> None:
        self.voice: list[tuple[float, int, int]] = []
        self.first: dict[int, float] = {}  # per caller port, its first packet (an ICE check)
        for d in datagrams:
            payload = d.payload
            self.first.setdefault(d.dest[1], d.at)
            if len(payload) < 12 or payload[0] >> 6 != 2:
                continue  # STUN, DTLS: not RTP
            if 192 <= payload[1] <= 223:
                continue  # RTCP (payload types 192-223 share the port)
            if len(payload) > VOICE_BYTES:
                self.voice.append((d.at, d.source[1], d.dest[1]))

    def to(self, port: int) -> list[float]:
        """When voice reached the caller port ``port``."""
        return [at for at, _, dest in self.voice if dest == port]

    def from_ports(self, low: int, high: int) -> list[float]:
        """When voice left the edge's ports ``low``-``high`` (one worker's range)."""
        return [at for at, source, _ in self.voice if low <= source <= high]

    def gap_s(self, ports: list[int]) -> tuple[float, float]:
        """A caller's gap (the last voice on its first connection, of ``ports`` in order, to
        the first on its last), and how much of it came before the new worker's first
        ICE check (the caller noticing, re-offering, the worker answering)."""
        before, after = self.to(ports[0]), self.to(ports[-1])
        assert before and after, ports
        return min(after) - max(before), self.first[ports[-1]] - max(before)
