"""``GET /widget?agent_id=…&<any>=…``: the web call widget, shipped as package files.

The page (``static/widget.html``, ``widget.js``, ``widget.css``; no build
step) gets its configuration rendered into it: the agent, the offer URL, the
browser's ICE servers (TURN with credentials minted for the page, which expire:
:mod:`telephony_edge.webrtc.turn`), the metadata (every query parameter but ``agent_id``)
and ``api.public_key``. That key is public by design: anyone who opens the
page can read it, which is why it only reaches agents marked
``allow_public_key`` from allowed origins (see
:mod:`telephony_edge.webrtc.browser`). The metadata is in the URL, so it is
for context (a page name, a customer tier), never for secrets.

``/widget/static/embed.js`` is the script tag for other sites: a floating
button that opens the page in an iframe. The page's ``frame-ancestors`` lists
``webrtc.allowed_origins``, so only those sites can show it.
"""

from __future__ import annotations

import json
import time
from importlib import resources
from typing import Any

from aiohttp import web

from telephony_edge.services import SERVICES
from telephony_edge.webrtc.browser import BROWSER
from telephony_edge.webrtc.settings import webrtc_settings

WIDGET_PATH = "/widget"
STATIC_PATH = "/widget/static"
ASSETS = {"widget.js": "text/javascript", "widget.css": "text/css", "embed.js": "text/javascript"}
MAX_METADATA_KEYS = 32
MAX_METADATA_CHARS = 512


def _asset(name: str) -> str:
    return resources.files("telephony_edge.webrtc").joinpath("static", name).read_text("utf-8")


def _error(status: int, message: str) -> web.Response:
    return web.Response(status=status, text=message + "\n", content_type="text/plain")


def _script_json(value: Any) -> str:
    """JSON safe inside ``<script>``: no ``</script>``, no HTML comment openers."""
    text = json.dumps(value, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


async def widget_page(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    settings = services.settings
    agent_id = request.query.get("agent_id", "")
    if not agent_id:
        return _error(400, "agent_id is required: /widget?agent_id=<agent>")
    agent = settings.agents.get(agent_id)
    if agent is None:
        return _error(404, f"unknown agent_id {agent_id!r}")
    if not agent.allow_public_key or not settings.api.public_key:
        return _error(403, f"agent {agent_id!r} does not take calls from the web widget")
    metadata = {k: v for k, v in request.query.items() if k != "agent_id"}
    if len(metadata) > MAX_METADATA_KEYS or any(
        len(k) + len(v) > MAX_METADATA_CHARS for k, v in metadata.items()
    ):
        return _error(400, "too many or too long query parameters for metadata")
    webrtc = webrtc_settings(settings)
    config = {
        "agentId": agent_id,
        "publicKey": settings.api.public_key,
        "offerUrl": "/webrtc/offer",
        "metadata": metadata,
        "iceServers": [
            s.for_browser(webrtc.turn_credential_ttl_s, time.time())
            for s in webrtc.browser_ice_servers
        ],
    }
    html = _asset("widget.html").replace("{{CONFIG}}", _script_json(config))
    ancestors = " ".join(["'self'", *sorted(request.app[BROWSER].origins)])
    headers = {
        "Content-Security-Policy": (
            "default-src 'self'; media-src 'self' blob:; img-src 'self' data:; "
            f"frame-ancestors {ancestors}"
        ),
        "Cache-Control": "no-store",
        "Referrer-Policy": "no-referrer",
    }
    return web.Response(text=html, content_type="text/html", headers=headers)


async def widget_asset(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in ASSETS:
        raise web.HTTPNotFound()
    return web.Response(
        text=_asset(name),
        content_type=ASSETS[name],
        headers={"Cache-Control": "public, max-age=300"},
    )


def mount_widget(app: web.Application) -> None:
    app.router.add_get(WIDGET_PATH, widget_page)
    app.router.add_get(STATIC_PATH + "/{name}", widget_asset)
