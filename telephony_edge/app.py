"""The aiohttp application: health, readiness, metrics, and every leg's routes."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from telephony_edge import metrics
from telephony_edge.calls.manager import CallManager
from telephony_edge.config import Settings
from telephony_edge.routing import NumberRouter

log = logging.getLogger(__name__)

DEMO_AGENT_PATH = "/_demo_agent"


@dataclass(slots=True)
class Services:
    """What every handler of this worker shares."""

    settings: Settings
    router: NumberRouter
    calls: CallManager
    worker_id: str
    http: aiohttp.ClientSession | None = None

    @property
    def client(self) -> aiohttp.ClientSession:
        assert self.http is not None, "the HTTP client exists while the app runs"
        return self.http


SERVICES = web.AppKey("services", Services)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    ready = services.calls.accepting
    body = {"ready": ready, "active_calls": services.calls.active}
    return web.json_response(body, status=200 if ready else 503)


async def metrics_handler(request: web.Request) -> web.Response:
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _http_client(app: web.Application) -> AsyncIterator[None]:
    services = app[SERVICES]
    services.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
    yield
    await services.http.close()


def create_app(settings: Settings) -> web.Application:
    """Build the worker's application from validated settings."""
    app = web.Application(client_max_size=1024 * 1024)
    worker_id = settings.server.worker_id or f"{socket.gethostname()}-{id(app):x}"
    services = Services(
        settings=settings,
        router=NumberRouter(settings),
        calls=CallManager(),
        worker_id=worker_id,
    )
    app[SERVICES] = services
    app.cleanup_ctx.append(_http_client)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_handler)
    return app


async def serve(settings: Settings) -> int:
    """Run the worker until SIGTERM/SIGINT, then drain and exit 0."""
    app = create_app(settings)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.server.host, settings.server.port)
    await site.start()
    bound = _bound_port(runner) or settings.server.port
    base = f"http://{settings.server.host}:{bound}"
    print(f"telephony-edge serving on {base}", flush=True)
    for path in ("/healthz", "/readyz", "/metrics"):
        print(f"  {base}{path}", flush=True)
    if settings.agent_core.url is None:
        print(f"  built-in demo agent core: ws://{settings.server.host}:{bound}{DEMO_AGENT_PATH}")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    services = app[SERVICES]
    metrics.DRAINING.set(1)
    log.info(
        "draining",
        extra={"active_calls": services.calls.active, "grace_s": settings.server.drain_grace_s},
    )
    forced = await services.calls.drain(settings.server.drain_grace_s)
    log.info("drained", extra={"calls_ended_by_drain": forced})
    await runner.cleanup()
    return 0


def _bound_port(runner: web.AppRunner) -> int | None:
    for addr in runner.addresses:
        if isinstance(addr, tuple) and len(addr) >= 2:
            return int(addr[1])
    return None
