"""WebRTC step 3: the widget page in Debian's Chromium (playwright) against a real edge.

Chromium (``/usr/bin/chromium``, never a downloaded browser) plays
``tests/fixtures/speech_table.wav`` then 5 s of silence (looped) as its fake
microphone and may use loopback ICE. The main test runs a real
``telephony-edge serve`` process (``serve_process``) on 127.0.0.1 with WebRTC
on, 127.0.0.1 advertised and the built-in demo core (no first message, so
what the page hears beyond the core's chime is the echo of the browser's
speech): the core hears the speech (its transcript in the chat), the page
measures the agent's audio and shows captions from the data channel, stop
ends the call with the end-of-call webhook. The screenshot goes under the
test's tmp_path (and to ``docs/widget.png`` when it is missing or
``REFRESH_DOCS_SCREENSHOT=1``). One browser serves the session; it runs on
its own thread and event loop (pytest-asyncio gives each test a new loop),
and tests hand it coroutines.

Missing chromium or playwright: skip, or fail under CI=true.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import shutil
import threading
import time
import wave
from collections.abc import AsyncIterator, Awaitable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from telephony_edge.app import create_app, set_local_address
from telephony_edge.config_loading import load_settings
from telephony_edge.webrtc.provider import WEBRTC_PEERS
from tests.conftest import Edge, Receiver, ServeProcess, free_port, missing_peer, wait_for
from tests.webrtc.test_offer import API_KEY, LOOPBACK

CHROMIUM = "/usr/bin/chromium"
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
SPEECH = FIXTURES / "speech_table.wav"
PUBLIC_KEY = "pk_widget_browser_public"
DOCS_SHOT = Path(__file__).resolve().parents[2] / "docs" / "widget.png"

T = TypeVar("T")


class BrowserThread:
    """One Chromium for the session, driven by playwright's async API on its own loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.playwright: Any = None
        self.browser: Any = None

    def call(self, coro: Awaitable[T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)  # type: ignore[arg-type]

    async def run(self, coro: Awaitable[T]) -> T:
        future: concurrent.futures.Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)  # type: ignore[arg-type]
        return await asyncio.wrap_future(future)

    async def launch(self, microphone: Path) -> None:
        from playwright.async_api import async_playwright

        self.playwright = await async_playwright().start()
        self.browser = await self.playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--use-fake-ui-for-media-stream",
                "--use-fake-device-for-media-stream",
                f"--use-file-for-fake-audio-capture={microphone}",
                "--allow-loopback-in-peer-connection",
                "--autoplay-policy=no-user-gesture-required",
            ],
        )

    async def shutdown(self) -> None:
        if self.browser is not None:
            await self.browser.close()
        if self.playwright is not None:
            await self.playwright.stop()

    def close(self) -> None:
        try:
            self.call(self.shutdown(), timeout=30)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)


def speech_then_silence(folder: Path, silence_s: float = 5.0) -> Path:
    """The speech fixture followed by silence: Chromium loops its fake microphone's file,
    and the demo core echoes only once the caller stops talking."""
    with wave.open(str(SPEECH)) as wav:
        params = wav.getparams()
        pcm = wav.readframes(wav.getnframes())
    pcm += bytes(int(params.framerate * silence_s) * params.sampwidth * params.nchannels)
    path = folder / "speech_then_silence.wav"
    with wave.open(str(path), "wb") as out:
        out.setparams(params)
        out.writeframes(pcm)
    return path


@pytest.fixture(scope="session")
def chromium(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrowserThread]:
    if not (os.path.exists(CHROMIUM) or shutil.which("chromium")):
        missing_peer(CHROMIUM, "apt-get install -y chromium")
    try:
        import playwright  # noqa: F401
    except ImportError:
        missing_peer("the playwright Python package", "pip install -e '.[test]'")
    browser = BrowserThread()
    try:
        browser.call(browser.launch(speech_then_silence(tmp_path_factory.mktemp("mic"))))
        yield browser
    finally:
        browser.close()


@pytest.fixture
async def widget_edge(receiver: Receiver) -> AsyncIterator[Edge]:
    """An edge whose own URL (known before it starts) is its public URL and allowed origin."""
    for _ in range(5):
        port = free_port()
        origin = f"http://127.0.0.1:{port}"
        settings = load_settings(
            None,
            server={"public_url": origin},
            api={"private_key": API_KEY, "public_key": PUBLIC_KEY},
            webhooks={
                "signing_secret": "whsec_webrtc_widget_01",
                "allow_private_targets": True,
                "backoff_base_s": 0.05,
            },
            webrtc={
                "enabled": True,
                "advertised_addresses": LOOPBACK,
                "allowed_peer_networks": ["127.0.0.0/8"],
                "allowed_origins": [origin],
                "connect_timeout_s": 10,
            },
            agents={
                "demo": {
                    "prompt": "You echo.",
                    "allow_public_key": True,
                    "session_data_webhook": receiver.url,
                }
            },
            calls={"inactivity_timeout_s": 30},
        )
        app = create_app(settings)
        server = TestServer(app, host="127.0.0.1", port=port)
        try:
            await server.start_server()
        except OSError:
            continue
        set_local_address(app, "127.0.0.1", port)
        try:
            yield Edge(server, app)
        finally:
            await server.close()
        return
    pytest.fail("no free port for the edge")


async def _stats(page: Any) -> dict[str, Any]:
    result: dict[str, Any] = await page.evaluate(
        "() => JSON.parse(JSON.stringify(window.widgetStats))"
    )
    return result


def widget_config(receiver: Receiver, *origins: str) -> dict[str, Any]:
    """A ``serve`` configuration: the demo agent public, 127.0.0.1 advertised, the
    built-in agent core; its own URL is an allowed origin without saying so."""
    return {
        "api": {"private_key": API_KEY, "public_key": PUBLIC_KEY},
        "webhooks": {
            "signing_secret": "whsec_webrtc_widget_01",
            "allow_private_targets": True,
            "backoff_base_s": 0.05,
        },
        "webrtc": {
            "enabled": True,
            "advertised_addresses": LOOPBACK,
            "allowed_peer_networks": ["127.0.0.0/8"],  # and so this host's (the meeting bot)
            "allowed_origins": list(origins),
            "connect_timeout_s": 10,
        },
        "agents": {
            "demo": {
                "prompt": "You echo.",
                "allow_public_key": True,
                "session_data_webhook": receiver.url,
            }
        },
        "calls": {"inactivity_timeout_s": 30},
    }


async def call_from_the_widget(
    chromium: BrowserThread,
    page: Any,
    receiver: Receiver,
    shots: list[Path],
    screen: Any = None,
) -> dict[str, Any]:
    """Start, hear the agent's echo, see captions, screenshot, stop; the end-of-call payload.

    ``page`` shows the widget: a playwright Page, or the Frame of an embedding page's
    iframe (then ``screen`` is that page, for the screenshots).
    """
    seen: dict[str, Any] = {}

    async def start() -> dict[str, Any]:
        await page.click("#toggle")
        await page.wait_for_function(
            "() => window.widgetStats.state !== 'connecting'", timeout=20_000
        )
        return await _stats(page)

    t0 = time.monotonic()
    stats = await chromium.run(start())
    assert stats["state"] == "live", stats
    live_s = time.monotonic() - t0
    call_id = stats["callId"]

    # the demo core echoes the browser's speech once it stops (beyond its 1.5 s chime)
    async def heard() -> dict[str, Any]:
        try:
            await page.wait_for_function(
                "() => window.widgetStats.output.voiced * 0.02 > 2.5", timeout=30_000
            )
        except Exception:
            seen["stats"] = await _stats(page)
            raise
        return await _stats(page)

    try:
        stats = await chromium.run(heard())
    except Exception:
        pytest.fail(f"the page heard too little of the agent: {seen}")
    assert stats["input"]["voiced"] > 50, stats

    async def captions() -> tuple[dict[str, Any], str]:  # over the data channel
        await page.wait_for_function(
            "() => widgetStats.captions.some(c => c.who === 'You')", timeout=10_000
        )
        return await _stats(page), await page.inner_text("#captions")

    stats, shown = await chromium.run(captions())
    lines = stats["captions"]
    assert any(c["who"] == "You" and "caller spoke" in c["text"] for c in lines), lines
    assert any(c["who"] == "Agent" for c in lines), lines
    assert "You: [caller spoke" in shown, shown

    async def press(digit: str) -> None:  # the keypad: DTMF over the data channel
        await page.click(f"#keypad button[data-digit='{digit}']")

    await chromium.run(press("5"))

    async def screenshots() -> None:
        for shot in shots:
            await (screen or page).screenshot(path=str(shot))

    await chromium.run(screenshots())
    assert shots[0].stat().st_size > 1000

    async def stop() -> dict[str, Any]:
        await page.click("#toggle")
        return await _stats(page)

    stats = await chromium.run(stop())
    assert stats["state"] == "ended"
    await wait_for(lambda: receiver.received, within=20)
    [payload] = receiver.received
    assert payload["call_id"] == call_id
    assert payload["call_status"] == "user-ended", payload
    # the core heard the browser's speech: its transcript is in the call's chat
    assert "caller spoke" in payload["chat"], payload["chat"]  # a JSON string
    media = payload["voip"]["media"]
    assert media["codec"].startswith("opus/48000") and media["inbound"]["packets"] > 100, media
    print(
        f"live in {live_s:.2f} s; heard {stats['output']['voiced']} voiced output samples; "
        f"call to webhook {time.monotonic() - t0:.2f} s; media {media}"
    )
    return payload


async def test_a_call_from_the_widget_in_chromium(
    chromium: BrowserThread,
    serve_process: Any,
    receiver: Receiver,
    tmp_path: Path,
) -> None:
    """The widget on a real ``telephony-edge serve`` (its own origin); the docs' screenshot."""
    edge: ServeProcess = serve_process(widget_config(receiver))

    async def open_page() -> tuple[Any, Any]:
        context = await chromium.browser.new_context(viewport={"width": 560, "height": 520})
        page = await context.new_page()
        await page.goto(edge.base_url + "/widget?agent_id=demo&page=pricing&plan=pro")
        return context, page

    context, page = await chromium.run(open_page())
    try:
        shots = [tmp_path / "widget-live.png"]
        if os.environ.get("REFRESH_DOCS_SCREENSHOT") or not DOCS_SHOT.exists():
            shots.append(DOCS_SHOT)
        payload = await call_from_the_widget(chromium, page, receiver, shots)
    finally:
        await chromium.run(context.close())
    assert payload["metadata"] == {"page": "pricing", "plan": "pro"}
    # the key pressed on the page reached the call (the bridge logs each DTMF it forwards)
    assert any(
        '"dtmf 5"' in line and payload["call_id"] in line for line in edge.log.splitlines()
    ), edge.log[-2000:]
    assert edge.metric("telephony_edge_bad_input_total", source="webrtc-datachannel") == 0
    edge.assert_healthy()


EMBEDDING_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>A shop</title></head>
<body><h1>A shop on another origin</h1>
<script src="{edge}/widget/static/embed.js" data-agent-id="demo"
        data-metadata='{{"page": "pricing"}}' data-label="Talk to us" async></script>
</body></html>
"""


@contextlib.asynccontextmanager
async def embedding_site(port: int, edge: str) -> AsyncIterator[str]:
    """Another origin (a second local HTTP server) whose page embeds the widget."""

    async def index(request: web.Request) -> web.Response:
        return web.Response(text=EMBEDDING_PAGE.format(edge=edge), content_type="text/html")

    app = web.Application()
    app.router.add_get("/", index)
    server = TestServer(app, host="127.0.0.1", port=port)
    await server.start_server()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await server.close()


async def test_the_embed_button_calls_from_another_origin(
    chromium: BrowserThread,
    serve_process: Any,
    receiver: Receiver,
    tmp_path: Path,
) -> None:
    """``embed.js`` on an allowed origin: the button opens the widget in an iframe and
    a whole call runs through it; on an origin not allowed the browser refuses the frame."""
    shop_port, other_port = free_port(), free_port()
    edge: ServeProcess = serve_process(widget_config(receiver, f"http://127.0.0.1:{shop_port}"))
    console: list[str] = []

    async def open_embed(url: str) -> tuple[Any, Any, Any]:
        context = await chromium.browser.new_context(viewport={"width": 900, "height": 640})
        page = await context.new_page()
        page.on("console", lambda msg: console.append(msg.text))
        await page.goto(url)
        await page.click("#telephony-edge-call-button")
        element = await page.wait_for_selector("#telephony-edge-call-frame")
        frame = await element.content_frame()
        await frame.wait_for_load_state()
        return context, page, frame

    async with embedding_site(shop_port, edge.base_url) as shop:
        context, page, frame = await chromium.run(open_embed(shop))
        try:
            assert frame.url.startswith(edge.base_url + "/widget?"), frame.url
            assert "page=pricing" in frame.url
            shots = [tmp_path / "embed-live.png"]
            payload = await call_from_the_widget(chromium, frame, receiver, shots, screen=page)
        finally:
            await chromium.run(context.close())
    assert payload["metadata"] == {"page": "pricing"}

    async with embedding_site(other_port, edge.base_url) as other:

        async def refused() -> Any:
            context, _, frame = await open_embed(other)
            try:
                return await frame.query_selector("#toggle")
            finally:
                await context.close()

        assert await chromium.run(refused()) is None
    await wait_for(lambda: any("frame-ancestors" in line for line in console), within=5)
    edge.assert_healthy()


async def test_the_widget_shows_the_reason_of_a_refusal(
    chromium: BrowserThread, widget_edge: Edge
) -> None:
    """The page shows the edge's reason (here the peer connection cap is already reached)."""
    widget_edge.app[WEBRTC_PEERS].count = widget_edge.app[WEBRTC_PEERS].limit

    async def run() -> dict[str, Any]:
        context = await chromium.browser.new_context()
        try:
            page = await context.new_page()
            await page.goto(widget_edge.url("/widget?agent_id=demo"))
            await page.click("#toggle")
            await page.wait_for_function(
                "() => window.widgetStats.state === 'error'", timeout=20_000
            )
            stats = await _stats(page)
            stats["status"] = await page.text_content("#status")
            return stats
        finally:
            await context.close()

    try:
        stats = await chromium.run(run())
    finally:
        widget_edge.app[WEBRTC_PEERS].count = 0
    assert "peer connections" in stats["error"] and "Error:" in stats["status"]
