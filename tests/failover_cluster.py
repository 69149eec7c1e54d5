"""A cluster whose Twilio calls outlive a worker: two real ``telephony-edge serve`` workers
behind Caddy on one ``redis-server``, for ``tests/test_failover.py`` and ``bench/failover.py``.

Both workers have the same ``server.public_url``: Caddy's (as in ``deploy/edge.yaml``),
which sends everything to the first worker while its ``/readyz`` answers (``lb_policy
first``, health checked every 200 ms) and to the second once it does not or cannot be
reached, so a test knows where its calls run. The simulated Twilio (one
:class:`~telephony_edge.twilio.simulator.SimulatedCall` per call) reaches the
edge only through Caddy, as Twilio would, and Twilio's REST API is the stand-in
(:mod:`telephony_edge.twilio.rest_standin`) the simulated calls listen to.

The agent core (:class:`TalkingCore`, in this process) says two lines and then
talks (a tone, sent a little ahead of real time) for ``talk_s``, so a worker
killed mid-call is killed mid-speech; a resumed call (``session_continuation.resumed``)
gets "Where were we?" and two seconds of tone at once. It keeps every ``initiate``
by call id. The end-of-call webhooks land in :attr:`Cluster.webhooks`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import struct
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestServer

from telephony_edge.twilio.rest_standin import TwilioRestStandIn
from telephony_edge.twilio.simulator import SimulatedCall
from tests.caddy import Caddy, caddy
from tests.conftest import (
    AgentCoreServer,
    ServeProcess,
    free_port,
    start_serve_process,
    stop_serve_process,
    wait_for,
)

ACCOUNT_SID = "AC" + "5" * 32
AUTH_TOKEN = "failover-auth-token-0123456789"
API_KEY = "failover-private-key-0123456789"
WEBHOOK_SECRET = "whsec_failover_tests_01"
NUMBER = "+15555550166"
CALLER = "+15555550100"
GREETING = "Hello, this is the agent."
ASKED = "I would like to check my order."
RESUMED = "Sorry, where were we?"
HEALTH_INTERVAL = "200ms"
#: Caddy in front of the workers: the first while it is ready, the other else
BALANCE = (
    "lb_policy first",
    "lb_try_duration 3s",
    "lb_try_interval 50ms",
    "fail_duration 2s",
    "health_uri /readyz",
    f"health_interval {HEALTH_INTERVAL}",
    "health_timeout 500ms",
    "health_status 200",
    # a new connection per request: a request on a pooled connection to a worker that just
    # died fails after it was sent (Caddy answers 502); a refused dial is tried elsewhere
    "transport http {",
    "\tkeepalive off",
    "}",
)


def tone(seconds: float, freq: float = 440.0) -> bytes:
    """PCM16 16 kHz mono: a sine at a third of full scale."""
    n = round(seconds * 16000)
    return b"".join(
        struct.pack("<h", round(10000 * math.sin(2 * math.pi * freq * i / 16000))) for i in range(n)
    )


class TalkingCore(AgentCoreServer):
    """See the module docstring."""

    def __init__(self, talk_s: float = 30.0) -> None:
        self.talk_s = talk_s
        self.initiates: dict[str, list[dict[str, Any]]] = {}
        self._second = tone(1.0)
        super().__init__()

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        first = await ws.receive_json(timeout=5)
        data = first["data"]
        self.initiates.setdefault(data["call"]["call_id"], []).append(data)
        talk: asyncio.Task[None] | None = None
        with contextlib.suppress(ConnectionError):  # the edge may close the link any time
            await ws.send_json({"method": "onready"})
            if data.get("session_continuation", {}).get("resumed"):
                await ws.send_json({"method": "onresponsetext", "data": {"text": RESUMED}})
                await ws.send_bytes(self._second * 2)
            else:
                await ws.send_json({"method": "onresponsetext", "data": {"text": GREETING}})
                await ws.send_json({"method": "ontranscript", "data": {"text": ASKED}})
                talk = asyncio.create_task(self._talk(ws))
        try:
            async for msg in ws:
                if msg.type in (WSMsgType.CLOSE, WSMsgType.ERROR):
                    break
        finally:
            if talk is not None:
                talk.cancel()
        return ws

    async def _talk(self, ws: web.WebSocketResponse) -> None:
        """A second of tone every 0.9 s: always a little ahead of what plays."""
        with contextlib.suppress(ConnectionError):
            for _ in range(math.ceil(self.talk_s)):
                await ws.send_bytes(self._second)
                await asyncio.sleep(0.9)

    def resumed(self, call_id: str) -> dict[str, Any] | None:
        """The ``session_continuation`` of the call's resumed ``initiate``, if one came."""
        for data in self.initiates.get(call_id, [])[1:]:
            continuation: dict[str, Any] = data.get("session_continuation", {})
            if continuation.get("resumed"):
                return continuation
        return None


@dataclass
class Live:
    """One simulated call and the caller's talking."""

    call: SimulatedCall
    call_id: str
    talking: asyncio.Task[None]


@dataclass
class Cluster:
    workers: dict[str, ServeProcess]
    proxy: Caddy
    core: TalkingCore
    rest: TwilioRestStandIn
    session: aiohttp.ClientSession
    redis_url: str
    prefix: str
    webhooks: list[dict[str, Any]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.proxy.url("")

    def call(self) -> SimulatedCall:
        call = SimulatedCall(
            self.session,
            self.url,
            to=NUMBER,
            from_=CALLER,
            auth_token=AUTH_TOKEN,
            account_sid=ACCOUNT_SID,
        )
        self.rest.add_call(call.call_sid, to=NUMBER, from_=CALLER, on_update=call.on_rest_update)
        return call

    async def place(self, count: int) -> list[Live]:
        """``count`` calls, each streaming and talking (silence) until cancelled."""
        calls = []
        for _ in range(count):
            call = self.call()
            await call.post_webhook()
            answer = call.result.answer
            assert answer is not None and answer.stream is not None, call.result.twiml
            await call.open_stream(answer.stream)
            talking = asyncio.create_task(call.stream_until_quiet(until=lambda r: False, max_s=120))
            calls.append(Live(call, answer.stream.parameters["call_id"], talking))
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
        """Every caller hangs up (Twilio's ``stop``)."""
        for live in calls:
            live.talking.cancel()
        await asyncio.gather(*(live.talking for live in calls), return_exceptions=True)
        await asyncio.gather(*(live.call.stop() for live in calls))


def worker_config(
    name: str,
    redis_url: str,
    prefix: str,
    public_url: str,
    core: str,
    rest: str,
    hook: str,
    calls: dict[str, Any],
) -> dict[str, Any]:
    return {
        "server": {
            "worker_id": name,
            "public_url": public_url,
            "drain_move_after_s": 0.6,  # three of Caddy's health checks
            "drain_grace_s": 30,
        },
        "api": {"private_key": API_KEY},
        "coordination": {"redis_url": redis_url, "key_prefix": prefix},
        "twilio": {
            "enabled": True,
            "account_sid": ACCOUNT_SID,
            "auth_token": AUTH_TOKEN,
            "api_base_url": rest,
            "validate_signatures": True,
        },
        "agent_core": {"url": core},
        "webhooks": {"signing_secret": WEBHOOK_SECRET, "allow_private_targets": True},
        "agents": {"agent": {"prompt": "You help.", "session_data_webhook": hook}},
        "regions": {"local": {"public_url": public_url}},
        "numbers": {NUMBER: {"provider": "twilio", "agent_id": "agent", "region": "local"}},
        "calls": {"inactivity_timeout_s": 120, **calls},
    }


@contextlib.asynccontextmanager
async def cluster(
    directory: Path,
    redis_url: str,
    *,
    talk_s: float = 30.0,
    calls: dict[str, Any] | None = None,
    configure: Callable[[str, dict[str, Any]], None] | None = None,
) -> AsyncIterator[Cluster]:
    """Workers ``worker-a`` (Caddy's first) and ``worker-b``, Caddy, the core, the stand-in.

    ``calls``: the workers' ``calls:`` settings (short leases by default, for the tests);
    ``configure(name, config)``: changes a worker's configuration before it starts."""
    core = TalkingCore(talk_s)
    await core.server.start_server()
    rest = TwilioRestStandIn(ACCOUNT_SID, AUTH_TOKEN)
    rest_port = free_port()
    await rest.start(rest_port)
    webhooks: list[dict[str, Any]] = []

    async def ended(request: web.Request) -> web.Response:
        webhooks.append(json.loads(await request.read()))
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/ended", ended)
    receiver = TestServer(app, host="127.0.0.1", port=0)
    await receiver.start_server()
    prefix = f"te-fo-{uuid.uuid4().hex[:12]}:"
    proxy_port = free_port()
    public_url = f"http://127.0.0.1:{proxy_port}"
    workers: dict[str, ServeProcess] = {}
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    try:
        for name in ("worker-a", "worker-b"):
            config = worker_config(
                name,
                redis_url,
                prefix,
                public_url,
                core.url,
                f"http://127.0.0.1:{rest_port}",
                str(receiver.make_url("/ended")),
                {"lease_s": 3.0, "lease_renew_s": 1.0} if calls is None else calls,
            )
            if configure is not None:
                configure(name, config)
            workers[name] = start_serve_process(config, directory / name)
        first, second = (int(w.base_url.rsplit(":", 1)[1]) for w in workers.values())
        proxy = caddy(directory, first, upstreams=[second], balance=BALANCE, port=proxy_port)
        async with proxy as px:
            found = Cluster(workers, px, core, rest, session, redis_url, prefix, webhooks)
            await wait_for(lambda: all(_ready(w) for w in workers.values()), 10)
            await asyncio.sleep(0.5)  # Caddy's health checks have seen both
            yield found
    finally:
        for worker in workers.values():
            stop_serve_process(worker)
        await session.close()
        await receiver.close()
        await rest.close()
        await core.server.close()


def _ready(worker: ServeProcess) -> bool:
    """Both workers' heartbeats are in Redis (each sees the coordinator up)."""
    return worker.metric("telephony_edge_coordinator_up") == 1
