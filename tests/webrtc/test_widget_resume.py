"""The widget in Chromium outlives its worker (issue 24): killing it leaves the page in the call.

Two real ``telephony-edge serve`` workers on the session's ``redis-server``
behind one URL: a small load balancer in the test that sends each request to
the first worker that takes the connection (as a health-checked one would,
once the dead worker's port refuses). The page (the widget of
``test_widget_browser``, served through that URL) calls the failover cluster's
talking agent core (:class:`~tests.failover_cluster.TalkingCore`: two lines,
then a tone) on worker A; A is SIGKILLed mid-speech; the page sees its audio
stop, re-offers through the same URL with the call's resume token, and the
call goes on on B: the agent's ``Sorry, where were we?`` as a caption, one
end-of-call webhook with the migration. The gap the page heard, from A's last
voice packet to B's first (a ``tcpdump`` of both workers' media port ranges,
kernel timestamps), is at most 2 s, and so is the page's own measure
(``widgetStats.gapsMs``). A drain (SIGTERM) moves the call the same way, the
edge telling the page ``move``.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.conftest import Receiver, ServeProcess, start_serve_process, stop_serve_process, wait_for
from tests.failover_cluster import GREETING, RESUMED, TalkingCore
from tests.sip.capture import Capture
from tests.webrtc.resuming_caller import HeardAudio
from tests.webrtc.test_widget_browser import (  # noqa: F401 (chromium: the session's browser)
    BrowserThread,
    _stats,
    chromium,
    widget_config,
)

HOP_HEADERS = {"host", "content-length", "transfer-encoding", "connection"}
MAX_GAP_S = 2.0  # what the issue asks of the caller's audio gap
PORTS = 50  # each worker's media port range


class Balancer:
    """One URL in front of the workers: each request to the first that takes the connection
    and is not draining (a 503, which a health-checked balancer would have seen at /readyz)."""

    def __init__(self) -> None:
        self.backends: list[str] = []
        self.app = web.Application()
        self.app.router.add_route("*", "/{tail:.*}", self.forward)
        self.server = TestServer(self.app, host="127.0.0.1", port=0)
        self.http: aiohttp.ClientSession | None = None

    async def forward(self, request: web.Request) -> web.Response:
        assert self.http is not None
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
        for backend in self.backends:
            try:
                async with self.http.request(
                    request.method, backend + request.path_qs, data=body, headers=headers
                ) as resp:
                    if resp.status == 503 and backend != self.backends[-1]:
                        continue
                    out = {k: v for k, v in resp.headers.items() if k.lower() not in HOP_HEADERS}
                    return web.Response(status=resp.status, body=await resp.read(), headers=out)
            except aiohttp.ClientConnectionError:
                continue  # a dead worker's port refuses: the next one
        return web.Response(status=502, text="no worker\n")


@pytest.fixture(name="balancer")
async def fixture_balancer() -> AsyncIterator[Balancer]:
    started = Balancer()
    await started.server.start_server()
    async with aiohttp.ClientSession() as http:
        started.http = http
        yield started
    await started.server.close()


@pytest.fixture(name="core")
async def fixture_core() -> AsyncIterator[TalkingCore]:
    started = TalkingCore()
    await started.server.start_server()
    yield started
    await started.server.close()


@pytest.fixture(name="low")
def fixture_low() -> int:
    """Worker A's first media port (B's range follows A's), below the ephemeral ports."""
    return random.randrange(20_000, 30_000 - 2 * PORTS)


@pytest.fixture(name="workers")
async def fixture_workers(
    redis_server: Any,
    core: TalkingCore,
    receiver: Receiver,
    balancer: Balancer,
    low: int,
    tmp_path: Path,
) -> AsyncIterator[list[ServeProcess]]:
    url = str(balancer.server.make_url("")).rstrip("/")
    prefix = f"te-wwr-{uuid.uuid4().hex[:12]}:"
    started = []
    for index, name in enumerate(("a", "b")):
        config = widget_config(receiver, url)
        first = low + index * PORTS
        config.update(
            server={"worker_id": f"worker-{name}", "public_url": url},
            agent_core={"url": core.url},
            coordination={"redis_url": redis_server.url, "key_prefix": prefix},
            calls={**config["calls"], "live_state_interval_s": 0.2},
        )
        config["webrtc"].update(media_port_min=first, media_port_max=first + PORTS - 1)
        started.append(await asyncio.to_thread(start_serve_process, config, tmp_path / name))
    balancer.backends = [worker.base_url for worker in started]
    yield started
    for worker in started:
        await asyncio.to_thread(stop_serve_process, worker)


@pytest.mark.parametrize(
    ("sig", "cause"), [(signal.SIGKILL, "crash"), (signal.SIGTERM, "drain")], ids=["kill", "drain"]
)
async def test_killing_the_widget_s_worker_leaves_the_page_in_the_call(
    sig: signal.Signals,
    cause: str,
    chromium: BrowserThread,  # noqa: F811
    workers: list[ServeProcess],
    balancer: Balancer,
    core: TalkingCore,
    receiver: Receiver,
    low: int,
    tmp_path: Path,
) -> None:
    a, b = workers
    url = str(balancer.server.make_url("/widget?agent_id=demo"))

    async def open_page() -> tuple[Any, Any]:
        context = await chromium.browser.new_context()
        page = await context.new_page()
        await page.goto(url)
        await page.click("#toggle")
        await page.wait_for_function(
            f"() => widgetStats.captions.some(c => c.text === {json.dumps(GREETING)})",
            timeout=20_000,
        )
        return context, page

    async with Capture(tmp_path / "media.pcap", low, low + 2 * PORTS - 1) as capture:
        context, page = await chromium.run(open_page())
        try:
            stats = await chromium.run(_stats(page))
            assert stats["state"] == "live", stats
            call_id = stats["callId"]
            await asyncio.sleep(1.0)  # the agent talks; the live state (every 0.2 s) has the chat
            a.process.send_signal(sig)

            async def resumed() -> dict[str, Any]:
                await page.wait_for_function(
                    "() => widgetStats.gapsMs.length === 1 && widgetStats.state === 'live'"
                    f" && widgetStats.captions.some(c => c.text === {json.dumps(RESUMED)})",
                    timeout=20_000,
                )
                return await _stats(page)

            stats = await chromium.run(resumed())
            assert stats["callId"] == call_id and stats["resumes"] == 1, stats
            continuation = core.resumed(call_id)
            assert continuation is not None and continuation["resume"]["cause"] == cause
            assert GREETING in [entry.get("content") for entry in continuation["chat"]]

            async def stop() -> dict[str, Any]:
                await page.click("#toggle")
                return await _stats(page)

            stats = await chromium.run(stop())
            assert stats["state"] == "ended"
        finally:
            await chromium.run(context.close())
    heard = HeardAudio(capture.datagrams())
    gap_s = min(heard.from_ports(low + PORTS, low + 2 * PORTS - 1)) - max(
        heard.from_ports(low, low + PORTS - 1)
    )
    [page_gap_ms] = stats["gapsMs"]
    print(f"the page's audio gap ({cause}): {gap_s * 1000:.0f} ms (the page says {page_gap_ms} ms)")
    assert 0 < gap_s <= MAX_GAP_S
    assert 0 < page_gap_ms <= MAX_GAP_S * 1000
    await wait_for(lambda: receiver.received, within=20)
    await asyncio.sleep(1.0)  # a second webhook would come by now
    [payload] = receiver.received
    assert payload["call_id"] == call_id
    assert payload["call_status"] == "user-ended", payload
    [move] = payload["migrations"]
    assert (move["from_worker"], move["to_worker"], move["cause"]) == (
        "worker-a",
        "worker-b",
        cause,
    )
    chat = [entry["content"] for entry in json.loads(payload["chat"])]
    assert chat.index(GREETING) < chat.index(RESUMED)
    b.assert_healthy()
