"""The aiohttp application: health, readiness, metrics, and every leg's routes."""

from __future__ import annotations

import asyncio
import gc
import logging
import secrets
import signal
import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from aiohttp import web

from telephony_edge import client_address, http_limits, metrics, tracing
from telephony_edge.admin import add_operator_routes, bound_url, create_admin_app, start_admin
from telephony_edge.agent.demo import add_agent_core_routes
from telephony_edge.api import START_OUTBOUND_PATH
from telephony_edge.banner import banner_lines
from telephony_edge.calls.manager import CallManager
from telephony_edge.calls.service import CallService
from telephony_edge.config import Settings
from telephony_edge.coord.factory import create_coordinator
from telephony_edge.errors import ListenError
from telephony_edge.recording.routes import add_recording_routes
from telephony_edge.registry import enabled_providers
from telephony_edge.routing import NumberRouter
from telephony_edge.services import SERVICES, Services

log = logging.getLogger(__name__)

DEMO_AGENT_PATH = "/_demo_agent"
#: the embedded demo core's per-process key: only this worker's calls may open sessions
DEMO_AGENT_KEY = web.AppKey("demo_agent_key", str)
#: the admin listener's application, when ``server.admin_port`` is set
ADMIN_APP = web.AppKey("admin_app", web.Application)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Whether this worker can take a new call: not draining, below ``server.max_calls``.

    The coordinator is not asked: during a Redis blip every worker would leave the
    Service at once, and the refusals the networks are promised (TwiML ``<Say>``, the
    NCCO ``talk``, SIP 503) would never reach them. Redis trouble shows in
    ``telephony_edge_coordinator_up`` and its alert instead; the body reports the
    coordinator as the worker last saw it (the heartbeat loop keeps that current).
    """
    services = request.app[SERVICES]
    full = services.calls.active >= services.settings.server.max_calls
    ready = services.calls.accepting and not full
    body = {
        "ready": ready,
        "active_calls": services.calls.active,
        "max_calls": services.settings.server.max_calls,
        "coordinator": "ok" if services.call_service.health.up else "unreachable",
    }
    return web.json_response(body, status=200 if ready else 503)


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    """Start the worker's shared clients and background tasks; stop them on exit."""
    services = app[SERVICES]
    # one agent-core link per call: the connection pool must not cap calls (aiohttp: 100)
    services.http = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=30)
    )
    await services.call_service.start()
    yield
    await services.call_service.stop()
    await services.coordinator.close()
    await services.http.close()
    await asyncio.to_thread(tracing.shutdown)  # exports what is queued


def create_app(settings: Settings) -> web.Application:
    """Build the worker's application from validated settings."""
    app = web.Application(client_max_size=1024 * 1024)
    tracing.configure(settings.tracing)
    worker_id = settings.server.worker_id or f"{socket.gethostname()}-{id(app):x}"
    router = NumberRouter(settings)
    manager = CallManager()
    coordinator = create_coordinator(settings.coordination)
    services = Services(
        settings=settings,
        router=router,
        calls=manager,
        coordinator=coordinator,
        call_service=CallService(
            settings, router, coordinator, manager, worker_id, lambda: services.client
        ),
        worker_id=worker_id,
    )
    app[SERVICES] = services
    app.cleanup_ctx.append(_lifecycle)
    client_address.install(app, settings.server)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    add_operator_routes(app, settings.server, admin=False)
    if settings.server.admin_port is not None:
        app[ADMIN_APP] = create_admin_app(services, [("/healthz", healthz), ("/readyz", readyz)])
    add_recording_routes(app)
    mount_providers(app)
    calls = [path for provider in services.providers.values() for path in provider.call_paths]
    tracing.install(app, [START_OUTBOUND_PATH, *calls])
    if settings.agent_core.url is None:
        app[DEMO_AGENT_KEY] = secrets.token_urlsafe(24)
        add_agent_core_routes(app, DEMO_AGENT_PATH, key=app[DEMO_AGENT_KEY])
    return app


def mount_providers(app: web.Application) -> None:
    """Mount every enabled provider of the registry and hand it to the call service."""
    services = app[SERVICES]
    for cls in enabled_providers(services.settings):
        provider = cls(services)
        provider.mount(app)
        services.providers[cls.name] = provider
        services.call_service.networks[cls.name] = provider


def set_local_address(app: web.Application, host: str, port: int) -> None:
    """Tell the app where it listens, once bound: the built-in agent core's URL, and the
    recordings' links when no public URL is configured."""
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    call_service = app[SERVICES].call_service
    if DEMO_AGENT_KEY in app:
        key = app[DEMO_AGENT_KEY]
        call_service.demo_agent_url = f"ws://{host}:{port}{DEMO_AGENT_PATH}?key={key}"
    server = call_service.settings.server
    if server.public_url is None and server.region is None:  # links to recordings: here
        call_service.recordings.public_url = f"http://{host}:{port}"


async def serve(settings: Settings) -> int:
    """Run the worker until SIGTERM/SIGINT, then drain and exit 0."""
    app = create_app(settings)
    runner = web.AppRunner(app, handle_signals=False, access_log=None, **_limits(app, settings))
    try:
        await runner.setup()  # starts the clients, the coordinator, SIP's listeners
    except BaseException:
        # what started before the failing step (HTTP client, coordinator, listeners) stops
        await runner.cleanup()
        raise
    site = web.TCPSite(runner, settings.server.host, settings.server.port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise ListenError(settings.server.host, settings.server.port, exc) from None
    bound = _bound_port(runner) or settings.server.port
    set_local_address(app, settings.server.host, bound)
    admin: web.AppRunner | None = None
    if ADMIN_APP in app:
        try:
            admin = await start_admin(app[ADMIN_APP], settings.server)
        except ListenError:
            await runner.cleanup()
            raise
    admin_url = bound_url(admin, settings.server.admin_host) if admin is not None else None
    for line in banner_lines(settings, f"http://{settings.server.host}:{bound}", admin_url):
        print(line, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # what start-up built lives as long as the worker: out of the collector's way, so a
    # full collection walks the calls' objects only (bench/gc_pause.py: 74 ms -> 5 ms)
    gc.freeze()
    log.info("serving", extra={"event_loop": type(loop).__module__.split(".")[0]})
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    services = app[SERVICES]
    metrics.DRAINING.set(1)
    log.info(
        "draining",
        extra={"active_calls": services.calls.active, "grace_s": settings.drain_wait_s},
    )
    drained_by = loop.time() + settings.drain_wait_s  # the move counts in the drain's time
    await _move_calls(services, settings.server.drain_move_after_s, settings.drain_wait_s)
    forced = await services.calls.drain(max(0.0, drained_by - loop.time()))
    log.info("drained", extra={"calls_ended_by_drain": forced})
    await runner.cleanup()
    if admin is not None:  # last: /metrics is scraped through the drain
        await admin.cleanup()
    return 0


async def _move_calls(services: Services, after_s: float | None, within_s: float) -> None:
    """Deploy = move: once the load balancer has stopped sending new streams here (this
    worker is not ready meanwhile), hand the live calls whose network can move them to the
    other workers behind the same URL (``telephony_edge.calls.migration``); the rest drain
    as they are. Nothing waits when no call or no other worker is there to move to."""
    services.calls.accepting = False  # not ready from now on
    calls = services.call_service
    if after_s is None or not services.calls.active or not await calls.can_move():
        return
    await asyncio.sleep(min(after_s, within_s))
    moved = await calls.move_calls()
    log.info("calls moved to other workers", extra={"calls_moved": moved})


def _limits(app: web.Application, settings: Settings) -> dict[str, Any]:
    """Bound idle and slow connections and the providers' pending media WebSockets."""
    providers = app[SERVICES].providers.values()
    paths = [path for provider in providers for path in provider.pending_websocket_paths]
    return http_limits.install(app, settings.server, paths)


def _bound_port(runner: web.AppRunner) -> int | None:
    for addr in runner.addresses:
        if isinstance(addr, tuple) and len(addr) >= 2:
            return int(addr[1])
    return None
