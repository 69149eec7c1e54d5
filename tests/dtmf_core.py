"""An agent core that sends ``send_dtmf`` requests and keeps what the edge tells it.

Each call it takes: ``initiate``, ``onready``, then after ``delay_s`` (or once
the caller pressed ``trigger``) every message of ``script`` (``send_dtmf``
data objects), ``gap_s`` apart. It keeps
the ``error`` messages and the caller's ``dtmf`` keys the edge sends, per call
id, and never ends the call itself.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any

from aiohttp import WSMsgType, web

from tests.conftest import AgentCoreServer


class DtmfCore(AgentCoreServer):
    def __init__(
        self,
        script: list[dict[str, Any]] | None = None,
        delay_s: float = 0.3,
        gap_s: float = 0,
        trigger: str | None = None,
    ) -> None:
        self.script = list(script or [])
        self.delay_s = delay_s
        self.gap_s = gap_s
        self.trigger = trigger
        self.errors: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.keys: dict[str, list[str]] = defaultdict(list)
        self.calls: list[str] = []
        super().__init__()

    async def start(self) -> DtmfCore:
        await self.server.start_server()
        return self

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        first = await ws.receive_json(timeout=5)
        assert first["method"] == "initiate"
        call_id = first["data"]["call"]["call_id"]
        self.calls.append(call_id)
        await ws.send_json({"method": "onready"})
        pressed = asyncio.Event()
        sender = asyncio.ensure_future(self._send_script(ws, pressed))
        try:
            async for msg in ws:  # until the edge closes the link
                if msg.type is WSMsgType.TEXT:
                    message = msg.json()
                    if message["method"] == "error":
                        self.errors[call_id].append(message["data"])
                    elif message["method"] == "dtmf":
                        self.keys[call_id].append(message["data"]["digit"])
                        if message["data"]["digit"] == self.trigger:
                            pressed.set()
                elif msg.type in (WSMsgType.CLOSE, WSMsgType.ERROR):
                    break
        finally:
            sender.cancel()
        return ws

    async def _send_script(self, ws: web.WebSocketResponse, pressed: asyncio.Event) -> None:
        if self.trigger is not None:
            await pressed.wait()
        else:
            await asyncio.sleep(self.delay_s)
        for data in self.script:
            await ws.send_json({"method": "send_dtmf", "data": data})
            await asyncio.sleep(self.gap_s)
