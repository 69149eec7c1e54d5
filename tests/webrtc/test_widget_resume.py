"""The widget in Chromium outlives its worker (issue 24): killing it leaves the page in the call.

Two real ``telephony-edge serve`` workers on the session's ``redis-server``
behind one URL: a small load balancer in the test that sends each request to
the first worker that takes the connection (as a health-checked one would,
once the dead worker's port refuses). The page (the widget of
``test_widget_browser``, served through that URL) calls the agent core of
``tests.calls.test_migration`` on worker A; A is SIGKILLed; the page sees its
audio stop, re-offers through the same URL with the call's resume token, and
the call goes on on B: the agent's ``Where were we?`` as a caption, one
end-of-call webhook with the migration. The page's own measure of the gap
(last audio from A to first from B) is printed, not asserted. A drain
(SIGTERM) moves the call the same way, the edge telling the page ``move``.
"""

from __future__ import annotations

import asyncio
import json
import signal
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.calls.test_migration import TalkingCore
from tests.conftest import Receiver, ServeProcess, start_serve_process, stop_serve_process, wait_for
from tests.webrtc.test_widget_browser import (  # noqa: F401 (chromium: the session's browser)
    BrowserThread,
    _stats,
    chromium,
    widget_config,
)

HOP_HEADERS = {"host", "content-length", "transfer-encoding", "connection"}


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


@pytest.fixture(name="workers")
async def fixture_workers(
    redis_server: Any, core: TalkingCore, receiver: Receiver, balancer: Balancer, tmp_path: Path
) -> AsyncIterator[list[ServeProcess]]:
    url = str(balancer.server.make_url("")).rstrip("/")
    prefix = f"te-wwr-{uuid.uuid4().hex[:12]}:"
    started = []
    for name in ("a", "b"):
        config = widget_config(receiver, url)
        config.update(
            server={"worker_id": f"worker-{name}", "public_url": url},
            agent_core={"url": core.url},
            coordination={"redis_url": redis_server.url, "key_prefix": prefix},
            calls={**config["calls"], "live_state_interval_s": 0.2},
        )
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
) -> None:
    a, b = workers
    url = str(balancer.server.make_url("/widget?agent_id=demo"))

    async def open_page() -> tuple[Any, Any]:
        context = await chromium.browser.new_context()
        page = await context.new_page()
        await page.goto(url)
        await page.click("#toggle")
        await page.wait_for_function(
            "() => widgetStats.captions.some(c => c.text === 'Hello, Ada.')", timeout=20_000
        )
        return context, page

    context, page = await chromium.run(open_page())
    try:
        stats = await chromium.run(_stats(page))
        assert stats["state"] == "live", stats
        call_id = stats["callId"]
        await asyncio.sleep(0.6)  # the live state's batched write (every 0.2 s) has the chat
        a.process.send_signal(sig)

        async def resumed() -> dict[str, Any]:
            await page.wait_for_function(
                "() => widgetStats.gapsMs.length === 1 && widgetStats.state === 'live'"
                " && widgetStats.captions.some(c => c.text === 'Where were we?')",
                timeout=20_000,
            )
            return await _stats(page)

        stats = await chromium.run(resumed())
        assert stats["callId"] == call_id and stats["resumes"] == 1, stats
        print(f"the page's audio gap ({cause}): {stats['gapsMs'][0]} ms")
        continuation = core.initiates[-1]["session_continuation"]
        assert continuation["resumed"] is True
        assert "Hello, Ada." in [entry.get("content") for entry in continuation["chat"]]

        async def stop() -> dict[str, Any]:
            await page.click("#toggle")
            return await _stats(page)

        stats = await chromium.run(stop())
        assert stats["state"] == "ended"
    finally:
        await chromium.run(context.close())
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
    assert chat.index("Hello, Ada.") < chat.index("Where were we?")
    b.assert_healthy()
