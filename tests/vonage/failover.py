"""A cluster whose Vonage calls outlive a worker, for ``tests/vonage/test_failover.py``.

The cluster of ``tests/failover_cluster.py`` with Vonage instead of Twilio: two
real ``telephony-edge serve`` workers with one ``server.public_url``, Caddy's,
on one ``redis-server``; Caddy sends everything to ``worker-a`` while its
``/readyz`` answers and to ``worker-b`` else. The simulated Vonage (one
:class:`~telephony_edge.vonage.simulator.SimulatedVonageCall` per call) reaches
the edge only through Caddy and runs the edge's NCCO as Vonage does: when a
websocket ``connect`` ends without the call ending, the ``notify`` after it.
The Voice API is the stand-in (``tests/vonage/fake_voice_api.py``), which tells
each simulated call of a hang-up or transfer through it. The agent core is the
Twilio cluster's :class:`~tests.failover_cluster.TalkingCore`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer

from telephony_edge.vonage.simulator import SimulatedVonageCall
from tests.caddy import Caddy, caddy
from tests.conftest import (
    ServeProcess,
    free_port,
    start_serve_process,
    stop_serve_process,
    wait_for,
)
from tests.failover_cluster import API_KEY, BALANCE, TalkingCore, worker_config
from tests.vonage.fake_voice_api import FakeVoiceApi
from tests.vonage.harness import APPLICATION_ID, SECRET, private_key_pem

NUMBER = "+15555550177"
CALLER = "+15555550100"


@dataclass
class Live:
    """One simulated Vonage call and the caller's talking (silence, at real time)."""

    call: SimulatedVonageCall
    call_id: str
    talking: asyncio.Task[None]


@dataclass
class VonageCluster:
    workers: dict[str, ServeProcess]
    proxy: Caddy
    core: TalkingCore
    api: FakeVoiceApi
    session: aiohttp.ClientSession
    webhooks: list[dict[str, Any]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.proxy.url("").rstrip("/")

    async def place(self, count: int) -> list[Live]:
        """``count`` calls through Caddy, each with its socket open and the caller talking."""
        calls = []
        for _ in range(count):
            call = SimulatedVonageCall(
                self.session, self.url, to=NUMBER, from_=CALLER, signature_secret=SECRET
            )
            self.api.add_call(call.uuid, to=NUMBER, from_=CALLER, on_update=call.on_api_update)
            await call.post_answer()
            answer = call.result.answer
            assert answer is not None and answer.websocket is not None, answer
            await call.open_socket(answer.websocket)
            talking = asyncio.create_task(call.silence_until(lambda _: False, 120))
            calls.append(Live(call, answer.websocket.headers["call_id"], talking))
        return calls

    async def record(self, call_id: str, via: str) -> dict[str, Any]:
        """``GET /calls/{id}`` on worker ``via`` (any worker reads any call)."""
        headers = {"Authorization": f"Bearer {API_KEY}"}
        url = f"{self.workers[via].base_url}/calls/{call_id}"
        async with self.session.get(url, headers=headers) as resp:
            assert resp.status == 200, await resp.text()
            found: dict[str, Any] = await resp.json()
            return found

    def webhooks_of(self, call_id: str) -> list[dict[str, Any]]:
        return [hook for hook in self.webhooks if hook.get("call_id") == call_id]

    async def hang_up(self, calls: list[Live]) -> None:
        """Every caller hangs up: Vonage closes the socket and reports ``completed``."""
        for live in calls:
            live.talking.cancel()
        await asyncio.gather(*(live.talking for live in calls), return_exceptions=True)
        await asyncio.gather(*(live.call.hang_up() for live in calls))


@contextlib.asynccontextmanager
async def vonage_cluster(
    directory: Path, redis_url: str, *, calls: dict[str, Any] | None = None
) -> AsyncIterator[VonageCluster]:
    """Workers ``worker-a`` (Caddy's first) and ``worker-b``, Caddy, the core, the Voice API.

    ``calls``: the workers' ``calls:`` settings (short leases by default, for the tests)."""
    core = TalkingCore()
    await core.server.start_server()
    key_path, public_key = private_key_pem(directory)
    api = await FakeVoiceApi(APPLICATION_ID, public_key).start()
    webhooks: list[dict[str, Any]] = []

    async def ended(request: web.Request) -> web.Response:
        webhooks.append(json.loads(await request.read()))
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/ended", ended)
    receiver = TestServer(app, host="127.0.0.1", port=0)
    await receiver.start_server()
    prefix = f"te-vfo-{uuid.uuid4().hex[:12]}:"
    proxy_port = free_port()
    public_url = f"http://127.0.0.1:{proxy_port}"
    workers: dict[str, ServeProcess] = {}
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    try:
        for name in ("worker-a", "worker-b"):
            hook = str(receiver.make_url("/ended"))
            leases = {"lease_s": 3.0, "lease_renew_s": 1.0} if calls is None else calls
            config = worker_config(name, redis_url, prefix, public_url, core.url, "", hook, leases)
            del config["twilio"]
            config["vonage"] = {
                "enabled": True,
                "signature_secret": SECRET,
                "application_id": APPLICATION_ID,
                "private_key_path": str(key_path),
                "api_base_url": api.url,
            }
            config["numbers"] = {
                NUMBER: {"provider": "vonage", "agent_id": "agent", "region": "local"}
            }
            workers[name] = start_serve_process(config, directory / name)
        first, second = (int(w.base_url.rsplit(":", 1)[1]) for w in workers.values())
        proxy = caddy(directory, first, upstreams=[second], balance=BALANCE, port=proxy_port)
        async with proxy as px:
            found = VonageCluster(workers, px, core, api, session, webhooks)
            await wait_for(
                lambda: all(
                    w.metric("telephony_edge_coordinator_up") == 1 for w in workers.values()
                ),
                10,
            )
            await asyncio.sleep(0.5)  # Caddy's health checks have seen both
            yield found
    finally:
        for worker in workers.values():
            stop_serve_process(worker)
        await session.close()
        await receiver.close()
        await api.close()
        await core.server.close()
