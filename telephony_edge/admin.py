"""The operators' surface: ``/metrics``, ``/status`` and, when asked, the API.

Why a listener of its own: a SIP worker runs on the host network, so whatever
its main port serves is on the node's addresses, beyond the reach of any
NetworkPolicy. With ``server.admin_port`` set, the operators' surface moves to
that port, bound to ``server.admin_host`` (loopback, or the pod's own address
for Prometheus), and the main port answers it 404; ``server.admin_api`` moves the
API there too. Without it, everything stays on the main port, as on a laptop.
``/healthz`` and ``/readyz`` are on both, for probes and balancers alike.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from prometheus_client.openmetrics import exposition as openmetrics

from telephony_edge import tracing
from telephony_edge.api import START_OUTBOUND_PATH, add_api_routes
from telephony_edge.config import ServerSettings
from telephony_edge.errors import ListenError
from telephony_edge.services import SERVICES, Services
from telephony_edge.status import add_status_routes


async def metrics_handler(request: web.Request) -> web.Response:
    """Prometheus' text format, or OpenMetrics (with exemplars: trace ids) when asked."""
    if "application/openmetrics-text" in request.headers.get("Accept", ""):
        body = openmetrics.generate_latest(REGISTRY)  # type: ignore[no-untyped-call]
        return web.Response(body=body, headers={"Content-Type": openmetrics.CONTENT_TYPE_LATEST})
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})


def add_operator_routes(app: web.Application, server: ServerSettings, *, admin: bool) -> None:
    """Add to ``app`` what of the operators' surface belongs on its listener.

    ``admin``: ``app`` is the admin listener's (else the main port's).
    """
    separate = server.admin_port is not None
    if admin or not separate:
        app.router.add_get("/metrics", metrics_handler)
        add_status_routes(app)
    if admin == server.admin_api:  # the API: on the admin port when asked, else the main
        add_api_routes(app)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def create_admin_app(services: Services, probes: list[tuple[str, Handler]]) -> web.Application:
    """The admin listener's application: the same worker's services, its own routes."""
    app = web.Application(client_max_size=1024 * 1024)
    app[SERVICES] = services
    for path, handler in probes:
        app.router.add_get(path, handler)
    add_operator_routes(app, services.settings.server, admin=True)
    tracing.install(app, [START_OUTBOUND_PATH])  # where the API is, with admin_api
    return app


async def start_admin(app: web.Application, server: ServerSettings) -> web.AppRunner:
    """Listen on ``server.admin_host:admin_port``; a bind that fails is a :class:`ListenError`."""
    assert server.admin_port is not None
    runner = web.AppRunner(
        app, handle_signals=False, access_log=None, keepalive_timeout=server.idle_timeout_s
    )
    await runner.setup()
    site = web.TCPSite(runner, server.admin_host, server.admin_port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise ListenError(server.admin_host, server.admin_port, exc) from None
    return runner


def bound_url(runner: web.AppRunner, host: str) -> str:
    """``http://host:port`` of where ``runner`` listens (port 0 resolved)."""
    port = next(int(a[1]) for a in runner.addresses if isinstance(a, tuple) and len(a) >= 2)
    return f"http://{host}:{port}"
