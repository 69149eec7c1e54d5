"""``GET /recordings/{call_id}?expires=…&sig=…``: a recording on this edge, by signed link.

403 for a wrong or expired signature (whether or not the recording exists,
so a link cannot probe for calls), 404 for a valid link to nothing (deleted
by retention, or kept in S3), else the file.
"""

from __future__ import annotations

import logging

from aiohttp import web

from telephony_edge.recording import signing
from telephony_edge.recording.recorder import CALL_ID
from telephony_edge.recording.storage import CONTENT_TYPES
from telephony_edge.services import SERVICES

log = logging.getLogger(__name__)


async def get_recording(request: web.Request) -> web.StreamResponse:
    call_id = request.match_info["call_id"]
    recordings = request.app[SERVICES].call_service.recordings
    secret = recordings.secret
    why = "no url_secret configured" if secret is None else None
    if secret is not None:
        query = request.query
        why = signing.check(secret, call_id, query.get("expires", ""), query.get("sig", ""))
    if why is not None:
        log.warning("recording link refused: %s", why, extra={"call_id": call_id[:128]})
        raise web.HTTPForbidden(text=f"{why}\n")
    path = recordings.local.find(call_id) if CALL_ID.match(call_id) else None
    if path is None:
        raise web.HTTPNotFound(text="no such recording\n")
    content_type = CONTENT_TYPES[path.suffix.lstrip(".")]
    return web.FileResponse(path, headers={"Content-Type": content_type})


def add_recording_routes(app: web.Application) -> None:
    app.router.add_get("/recordings/{call_id}", get_recording)
