"""A cluster whose calls outlive a worker: two real ``telephony-edge serve`` workers behind
Caddy on one ``redis-server``, for ``tests/test_failover.py`` and ``bench/failover.py``.

Both workers have the same ``server.public_url``: Caddy's (as in ``deploy/edge.yaml``),
which sends everything to the first worker while its ``/readyz`` answers (``lb_policy
first``, health checked every 200 ms), to the second once it does not or cannot be
reached, and to a third (a spare port: :meth:`Cluster.replace` starts a worker there,
the restarted pod of a rolling restart) when neither answers, so a test knows where its
calls run.

The network is an adapter (:class:`Network`), one small class per carrier with what is
its own: its stand-ins, its configuration, how its simulator places a call, hangs up,
and shows that a call came back. :class:`Twilio`: one
:class:`~telephony_edge.twilio.simulator.SimulatedCall` per call, reaching the edge only
through Caddy as Twilio would and following the ``<Redirect>`` after a stream that ended,
with Twilio's REST API the stand-in (:mod:`telephony_edge.twilio.rest_standin`) the
simulated calls listen to. :class:`Vonage`: one
:class:`~telephony_edge.vonage.simulator.SimulatedVonageCall` per call, running the
edge's NCCO as Vonage does (the ``notify`` after a websocket ``connect`` that ended
without the call), with the Voice API stand-in (``tests/vonage/fake_voice_api.py``).

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
from typing import Any, ClassVar
from urllib.parse import urlencode

import aiohttp
from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestServer
from yarl import URL

from telephony_edge.twilio import twiml
from telephony_edge.twilio.rest_standin import TwilioRestStandIn
from telephony_edge.twilio.signature import SIGNATURE_HEADER, compute_signature
from telephony_edge.twilio.simulator import SimulatedCall
from telephony_edge.vonage import ncco
from telephony_edge.vonage.signature import query_payload, sign
from telephony_edge.vonage.simulator import SimulatedVonageCall
from tests.caddy import Caddy, caddy
from tests.conftest import (
    AgentCoreServer,
    ServeProcess,
    free_port,
    start_serve_process,
    stop_serve_process,
    wait_for,
)
from tests.vonage.fake_voice_api import FakeVoiceApi
from tests.vonage.harness import APPLICATION_ID, SECRET, private_key_pem

ACCOUNT_SID = "AC" + "5" * 32
AUTH_TOKEN = "failover-auth-token-0123456789"
API_KEY = "failover-private-key-0123456789"
WEBHOOK_SECRET = "whsec_failover_tests_01"
NUMBER = "+15555550166"  # Twilio's
VONAGE_NUMBER = "+15555550177"
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
        self.talk_on_resume = False  # a resumed call talks on too (for a second move)
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
                if self.talk_on_resume:
                    talk = asyncio.create_task(self._talk(ws))
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

    call: Any  # the network's simulated call (SimulatedCall, SimulatedVonageCall)
    call_id: str
    talking: asyncio.Task[None]


@dataclass(frozen=True, slots=True)
class Back:
    """One call back after a break: the caller's gap, and the break to the new socket."""

    gap_s: float
    socket_back_s: float | None


class Network:
    """What a carrier brings to the cluster (see the module docstring); one subclass each."""

    name: ClassVar[str]
    number: ClassVar[str]

    async def start(self, directory: Path) -> None:
        """Start the network's stand-ins."""

    async def close(self) -> None:
        """Stop them."""

    def configure(self, config: dict[str, Any]) -> None:
        """A worker's configuration: the network's section and the number."""
        raise NotImplementedError

    async def place(self, session: aiohttp.ClientSession, url: str) -> Live:
        """One call through ``url`` (Caddy), its media flowing and the caller talking."""
        raise NotImplementedError

    async def hang_up(self, live: Live) -> None:
        """The caller hangs up, as the network says it."""
        raise NotImplementedError

    def breaks(self, live: Live) -> int:
        """How many times the call's media broke and the network went on."""
        raise NotImplementedError

    def backs(self, live: Live) -> list[Back]:
        """Each break of the call's media that it came back from, in order."""
        raise NotImplementedError

    def back(self, live: Live) -> Back | None:
        """The call's one break and how it came back; None unless exactly one came back."""
        backs = self.backs(live)
        return backs[0] if len(backs) == 1 and self.breaks(live) == 1 else None

    def state(self, live: Live) -> str:
        """What the simulator saw of the call, for a failure's message."""
        return live.call.result.summary()  # type: ignore[no-any-return]

    async def over(self, live: Live, within_s: float) -> bool:
        """Whether the network ended the call (nothing went on after its socket) in time."""
        raise NotImplementedError

    async def ask_resume(self, c: Cluster, live: Live) -> tuple[tuple[int, bool], tuple[int, bool]]:
        """Ask the edge what next for ``live``'s media, as the network would after its socket
        (Twilio's ``<Redirect>``, Vonage's ``notify``), then replay the same request:
        each time the HTTP status and whether the answer brings media back."""
        raise NotImplementedError


class Twilio(Network):
    """Twilio: the voice webhook, ``<Connect><Stream>``, the ``<Redirect>`` after it."""

    name = "twilio"
    number = NUMBER

    async def start(self, directory: Path) -> None:
        self.rest = TwilioRestStandIn(ACCOUNT_SID, AUTH_TOKEN)
        self.rest_port = free_port()
        await self.rest.start(self.rest_port)

    async def close(self) -> None:
        await self.rest.close()

    def configure(self, config: dict[str, Any]) -> None:
        config["twilio"] = {
            "enabled": True,
            "account_sid": ACCOUNT_SID,
            "auth_token": AUTH_TOKEN,
            "api_base_url": f"http://127.0.0.1:{self.rest_port}",
            "validate_signatures": True,
        }

    async def place(self, session: aiohttp.ClientSession, url: str) -> Live:
        call = SimulatedCall(
            session, url, to=NUMBER, from_=CALLER, auth_token=AUTH_TOKEN, account_sid=ACCOUNT_SID
        )
        self.rest.add_call(call.call_sid, to=NUMBER, from_=CALLER, on_update=call.on_rest_update)
        await call.post_webhook()
        answer = call.result.answer
        assert answer is not None and answer.stream is not None, call.result.twiml
        await call.open_stream(answer.stream)
        talking = asyncio.create_task(call.stream_until_quiet(until=lambda r: False, max_s=120))
        return Live(call, answer.stream.parameters["call_id"], talking)

    async def hang_up(self, live: Live) -> None:
        await live.call.stop()  # Twilio's ``stop``

    def breaks(self, live: Live) -> int:
        return len(live.call.result.resumes)

    def backs(self, live: Live) -> list[Back]:
        return [
            Back(r.gap_s, None if r.streamed_at_s is None else r.streamed_at_s - r.ended_at_s)
            for r in live.call.result.resumes
            if r.gap_s is not None
        ]

    async def over(self, live: Live, within_s: float) -> bool:
        ended: bool = await live.call.wait_closed(within_s)
        return ended

    async def ask_resume(self, c: Cluster, live: Live) -> tuple[tuple[int, bool], tuple[int, bool]]:
        fields = {**live.call.webhook_fields(), "CallStatus": "in-progress"}
        url = f"{twiml.resume_url(c.url, live.call_id)}&{urlencode(fields)}"
        signed = {SIGNATURE_HEADER: compute_signature(AUTH_TOKEN, url, {})}
        answers = []
        for _ in range(2):
            async with c.session.get(url, headers=signed) as resp:
                text = await resp.text()
                streams = resp.status == 200 and "<Stream" in text
                answers.append((resp.status, streams))
        return answers[0], answers[1]


class Vonage(Network):
    """Vonage: the answer webhook's NCCO, a websocket ``connect``, the ``notify`` after it."""

    name = "vonage"
    number = VONAGE_NUMBER

    async def start(self, directory: Path) -> None:
        self.key_path, public_key = private_key_pem(directory)
        self.api = await FakeVoiceApi(APPLICATION_ID, public_key).start()

    async def close(self) -> None:
        await self.api.close()

    def configure(self, config: dict[str, Any]) -> None:
        config["vonage"] = {
            "enabled": True,
            "signature_secret": SECRET,
            "application_id": APPLICATION_ID,
            "private_key_path": str(self.key_path),
            "api_base_url": self.api.url,
        }

    async def place(self, session: aiohttp.ClientSession, url: str) -> Live:
        call = SimulatedVonageCall(
            session, url.rstrip("/"), to=VONAGE_NUMBER, from_=CALLER, signature_secret=SECRET
        )
        self.api.add_call(call.uuid, to=VONAGE_NUMBER, from_=CALLER, on_update=call.on_api_update)
        await call.post_answer()
        answer = call.result.answer
        assert answer is not None and answer.websocket is not None, answer
        await call.open_socket(answer.websocket)
        talking = asyncio.create_task(call.silence_until(lambda _: False, 120))
        return Live(call, answer.websocket.headers["call_id"], talking)

    async def hang_up(self, live: Live) -> None:
        await live.call.hang_up()  # the socket closes, then the event webhook's ``completed``

    def breaks(self, live: Live) -> int:
        return len(live.call.result.notified)

    def backs(self, live: Live) -> list[Back]:
        result = live.call.result
        sockets = result.sockets
        return [
            Back(gap, None if old.closed_at is None else new.opened_at - old.closed_at)
            for gap, old, new in zip(result.gaps_s, sockets, sockets[1:], strict=False)
        ]

    async def over(self, live: Live, within_s: float) -> bool:
        ended: bool = await live.call.wait_over(within_s)
        return ended

    async def ask_resume(self, c: Cluster, live: Live) -> tuple[tuple[int, bool], tuple[int, bool]]:
        fields = {"uuid": live.call.uuid, "after": "websocket"}
        url = URL(ncco.resume_url(c.url, live.call_id)).extend_query(fields)
        token = sign(SECRET, query_payload(url.query.items()))
        signed = {"Authorization": f"Bearer {token}"}
        answers = []
        for _ in range(2):
            async with c.session.get(url, headers=signed) as resp:
                text = await resp.text()
                answers.append((resp.status, resp.status == 200 and '"connect"' in text))
        return answers[0], answers[1]


NETWORKS: dict[str, type[Network]] = {"twilio": Twilio, "vonage": Vonage}


@dataclass
class Cluster:
    workers: dict[str, ServeProcess]
    proxy: Caddy
    core: TalkingCore
    net: Network
    session: aiohttp.ClientSession
    webhooks: list[dict[str, Any]] = field(default_factory=list)
    #: starts a worker of this cluster's configuration (a name, a port); see :meth:`replace`
    start_worker: Callable[[str, int | None], ServeProcess] | None = None
    spare_port: int = 0  # Caddy's third upstream, after worker-a and worker-b

    async def replace(self, name: str) -> ServeProcess:
        """Start worker ``name`` on the spare port (Caddy's last choice: a restarted pod of
        a rolling restart), and wait until it is ready and Caddy has seen it."""
        assert self.start_worker is not None
        # in a thread: the start waits for the process, and this loop runs the agent core and
        # the callers (a core that answers no ping for 2.5 s is cut off by the workers)
        worker = await asyncio.to_thread(self.start_worker, name, self.spare_port)
        self.workers[name] = worker
        await wait_for(lambda: _ready(worker), 10)
        await asyncio.sleep(0.5)  # Caddy's health checks have seen it
        return worker

    @property
    def url(self) -> str:
        return self.proxy.url("").rstrip("/")

    async def place(self, count: int) -> list[Live]:
        """``count`` calls, each with its media flowing and the caller talking (silence)."""
        return [await self.net.place(self.session, self.url) for _ in range(count)]

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
        """Every caller hangs up."""
        for live in calls:
            live.talking.cancel()
        await asyncio.gather(*(live.talking for live in calls), return_exceptions=True)
        await asyncio.gather(*(self.net.hang_up(live) for live in calls))


def worker_config(
    name: str,
    redis_url: str,
    prefix: str,
    public_url: str,
    core: str,
    hook: str,
    calls: dict[str, Any],
    net: Network,
) -> dict[str, Any]:
    config: dict[str, Any] = {
        "server": {
            "worker_id": name,
            "public_url": public_url,
            "drain_move_after_s": 0.6,  # three of Caddy's health checks
            "drain_grace_s": 30,
        },
        "api": {"private_key": API_KEY},
        "coordination": {"redis_url": redis_url, "key_prefix": prefix},
        "agent_core": {"url": core},
        "webhooks": {"signing_secret": WEBHOOK_SECRET, "allow_private_targets": True},
        "agents": {"agent": {"prompt": "You help.", "session_data_webhook": hook}},
        "regions": {"local": {"public_url": public_url}},
        "numbers": {net.number: {"provider": net.name, "agent_id": "agent", "region": "local"}},
        "calls": {"inactivity_timeout_s": 120, **calls},
    }
    net.configure(config)
    return config


@contextlib.asynccontextmanager
async def cluster(
    directory: Path,
    redis_url: str,
    *,
    network: str = "twilio",
    talk_s: float = 30.0,
    calls: dict[str, Any] | None = None,
    configure: Callable[[str, dict[str, Any]], None] | None = None,
) -> AsyncIterator[Cluster]:
    """Workers ``worker-a`` (Caddy's first) and ``worker-b``, Caddy, the core, the network's
    stand-ins.

    ``calls``: the workers' ``calls:`` settings (short leases by default, for the tests);
    ``configure(name, config)``: changes a worker's configuration before it starts."""
    core = TalkingCore(talk_s)
    await core.server.start_server()
    net = NETWORKS[network]()
    await net.start(directory)
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

    def start_worker(name: str, port: int | None = None) -> ServeProcess:
        config = worker_config(
            name,
            redis_url,
            prefix,
            public_url,
            core.url,
            str(receiver.make_url("/ended")),
            {"lease_s": 3.0, "lease_renew_s": 1.0} if calls is None else calls,
            net,
        )
        if configure is not None:
            configure(name, config)
        return start_serve_process(config, directory / name, port=port)

    try:
        for name in ("worker-a", "worker-b"):
            workers[name] = start_worker(name)
        first, second = (int(w.base_url.rsplit(":", 1)[1]) for w in workers.values())
        spare = free_port()
        upstreams = [second, spare]
        proxy = caddy(directory, first, upstreams=upstreams, balance=BALANCE, port=proxy_port)
        async with proxy as px:
            found = Cluster(workers, px, core, net, session, webhooks, start_worker, spare)
            await wait_for(lambda: all(_ready(w) for w in workers.values()), 10)
            await asyncio.sleep(0.5)  # Caddy's health checks have seen both
            yield found
    finally:
        for worker in workers.values():
            stop_serve_process(worker)
        await session.close()
        await receiver.close()
        await net.close()
        await core.server.close()


def _ready(worker: ServeProcess) -> bool:
    """Both workers' heartbeats are in Redis (each sees the coordinator up)."""
    return worker.metric("telephony_edge_coordinator_up") == 1
