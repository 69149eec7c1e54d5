"""The public HTTP API: outbound calls and call control, behind the private API key.

``POST /start_outbound_call`` places a call from one of the edge's numbers
through that number's provider (``Provider.dial``), to a number, or to a
``sip:`` URI from a SIP number. The hang-up, transfer and
read endpoints work from any worker: the call service finds the call's owner
through the coordinator and waits for its answer (a lapsed owner: 409, the
call reaped). ``GET /calls`` lists live calls from the coordinator's index.
No network is named here.

Every endpoint needs ``Authorization: Bearer <api.private_key>``, compared
in constant time. Errors are JSON ``{"error": "..."}`` with a fitting status.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from telephony_edge import metrics
from telephony_edge.agent.pool import AGENT_CORE_PREFIX
from telephony_edge.calls.leg import NotSupported
from telephony_edge.calls.record import CallRecord, CallState
from telephony_edge.calls.refusals import CallRejected, ControlFailed, ProviderError
from telephony_edge.calls.webhooks import SESSION_WEBHOOK_QUEUE, without_webhook_headers
from telephony_edge.config_problems import agent_config_problems
from telephony_edge.config_values import normalize_e164
from telephony_edge.coord.health import CoordinatorUnavailable
from telephony_edge.routing import normalize_destination
from telephony_edge.services import SERVICES

log = logging.getLogger(__name__)

#: how long a self-registered agent core stays in its pool without another heartbeat
AGENT_CORE_HEARTBEAT_TTL_S = 15.0
START_OUTBOUND_PATH = "/start_outbound_call"

MAX_BODY_BYTES = 64 * 1024  # an outbound call's agent_config and metadata fit many times over
MAX_JSON_DEPTH = 32
#: what a 503 for an unreachable coordinator tells clients to wait (a reconnect is ~1 s)
RETRY_AFTER_S = 2
_BAD_INPUT = metrics.BAD_INPUT.labels(source="api")
_BAD_INPUT_STATUSES = frozenset({400, 401, 413})


class ApiError(Exception):
    """An API request that fails with ``status`` and a JSON body."""

    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.body = {"error": message, **extra}


Handler = Callable[[web.Request], Awaitable[web.Response]]


def _json_errors(handler: Handler) -> Handler:
    """Turn :class:`ApiError` into its JSON response."""

    @functools.wraps(handler)
    async def wrapper(request: web.Request) -> web.Response:
        try:
            return await handler(request)
        except CoordinatorUnavailable as exc:
            return _unavailable(str(exc))
        except ApiError as exc:
            if exc.status in _BAD_INPUT_STATUSES:
                _BAD_INPUT.inc()
            headers = (
                {"WWW-Authenticate": "Bearer"}
                if exc.status == 401
                else {"Retry-After": str(RETRY_AFTER_S)}
                if exc.status == 503  # draining, at capacity, the coordinator away
                else None
            )
            return web.json_response(exc.body, status=exc.status, headers=headers)
        except Exception as exc:
            services = request.app[SERVICES]
            if not isinstance(exc, services.coordinator.unavailable):
                raise
            down = services.call_service.health.failed("api", exc)
            return _unavailable(str(down))

    return wrapper


def _unavailable(reason: str) -> web.Response:
    """503: the coordinator is away; the client may try again shortly."""
    return web.json_response(
        {"error": reason}, status=503, headers={"Retry-After": str(RETRY_AFTER_S)}
    )


def _authorize(request: web.Request) -> None:
    """401 unless the request carries the private key; any header bytes at all give 401, not 500.

    aiohttp decodes header bytes that are not UTF-8 as lone surrogates
    (``surrogateescape``), which a plain ``.encode()`` refuses; encoding them
    back the same way compares the bytes the client actually sent.
    """
    key = request.app[SERVICES].settings.api.private_key
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    try:
        given_bytes = given.strip().encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate surrogateescape did not make
        given_bytes = b""
    if (
        not key
        or scheme.lower() != "bearer"
        or not given_bytes
        or not hmac.compare_digest(given_bytes, key.encode())
    ):
        raise ApiError(401, "missing or invalid API key (Authorization: Bearer <private key>)")


async def _json_object(request: web.Request) -> dict[str, Any]:
    """The body as a JSON object, bounded in size and nesting; 413/400 for anything else.

    What aiohttp's ``request.json()`` lets through as a 500: a bogus
    ``charset`` (LookupError), bytes that are not in it (UnicodeDecodeError),
    nesting deep enough for a RecursionError (in the parser, or later in
    whatever walks the value).
    """
    raw = await _bounded_body(request)
    try:
        body = json.loads(raw.decode(request.charset or "utf-8"))
    except (ValueError, LookupError, RecursionError):
        raise ApiError(400, "the body must be a JSON object") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object")
    if _too_deep(body, MAX_JSON_DEPTH):
        raise ApiError(400, f"the body nests deeper than {MAX_JSON_DEPTH} levels")
    try:  # a lone surrogate escape ("\ud800") parses, but no UTF-8 peer can take it later
        json.dumps(body, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        raise ApiError(400, "the body has a lone surrogate (\\ud800-\\udfff), not text") from None
    return body


async def _bounded_body(request: web.Request) -> bytes:
    """The body, refused with 413 past ``MAX_BODY_BYTES`` (stops reading there)."""
    too_large = ApiError(413, f"the body must be at most {MAX_BODY_BYTES} bytes")
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise too_large
    body = bytearray()
    async for chunk in request.content.iter_chunked(16 * 1024):
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise too_large
    return bytes(body)


def _too_deep(value: object, limit: int) -> bool:
    """Whether ``value`` nests lists/objects more than ``limit`` deep (iterative: no recursion)."""
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = (
            item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        )
        for child in children:
            if isinstance(child, dict | list):
                if depth + 1 > limit:
                    return True
                stack.append((child, depth + 1))
    return False


def _string(body: dict[str, Any], name: str, *, required: bool = True) -> str | None:
    value = body.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ApiError(400, f"{name} is required and must be a non-empty string")
    return value.strip()


#: body fields with a documented shape, checked wherever an endpoint reads them
_CHECKED_OBJECTS: dict[str, Callable[[dict[str, Any]], list[str]]] = {
    "agent_config": agent_config_problems,
}


def _object(body: dict[str, Any], name: str) -> dict[str, Any] | None:
    """``body[name]`` if a JSON object (or absent), else 400.

    A field with a documented shape (``agent_config``) is checked here, so
    every endpoint that takes it (outbound calls, SIP registrations, WebRTC
    offers) refuses the same mistakes in the same words: a misspelt key is a
    400 naming it, never a setting stored and silently ignored.
    """
    value = body.get(name)
    if value is not None and not isinstance(value, dict):
        raise ApiError(400, f"{name} must be a JSON object")
    check = _CHECKED_OBJECTS.get(name)
    problems = check(value) if check is not None and value is not None else []
    if problems:
        raise ApiError(400, "; ".join(problems), problems=problems)
    return value


def _phone(body: dict[str, Any], name: str) -> str:
    raw = _string(body, name)
    assert raw is not None
    try:
        return normalize_e164(raw)
    except ValueError as exc:
        raise ApiError(400, f"{name}: {exc}") from None


def _destination(body: dict[str, Any], name: str) -> str:
    """A number (E.164), or a ``sip:`` URI for the networks that call those."""
    raw = _string(body, name)
    assert raw is not None
    if not raw.lower().startswith(("sip:", "sips:")):
        return _phone(body, name)
    try:
        return normalize_destination(raw)
    except ValueError as exc:
        raise ApiError(400, f"{name}: {exc}") from None


def call_view(record: CallRecord) -> dict[str, Any]:
    """A call record as the API shows it (``from`` rather than ``from_``).

    Without the webhooks' ``headers``, as in the end-of-call payload: they
    are the operator's credentials, never returned by the API.
    """
    view = record.to_dict()
    view["agent_config"] = without_webhook_headers(view.get("agent_config") or {})
    view["from"] = view.pop("from_")
    view["duration"] = record.duration
    return view


async def start_outbound_call(request: web.Request) -> web.Response:
    """``POST /start_outbound_call`` → ``{"call_id", "provider_call_id"}``."""
    _authorize(request)
    body = await _json_object(request)
    services = request.app[SERVICES]
    from_phone = _phone(body, "from_phone")
    to_phone = _destination(body, "to_phone")
    agent_id = _string(body, "agent_id")
    assert agent_id is not None
    agent_config = _object(body, "agent_config")
    metadata = _object(body, "metadata")
    include = body.get("include_metadata_in_prompt", False)
    if not isinstance(include, bool):
        raise ApiError(400, "include_metadata_in_prompt must be true or false")
    session_id = _string(body, "session_id", required=False)

    route = services.router.lookup(from_phone)
    if route is None:
        raise ApiError(400, f"from_phone {from_phone} is not one of this edge's numbers")
    provider = services.providers.get(route.provider)
    if provider is None:
        raise ApiError(
            400,
            f"from_phone {from_phone} is a {route.provider} number; outbound calls from "
            f"{route.provider} numbers are not available on this edge",
        )
    if not to_phone.startswith("+") and not provider.dials_sip_uris:
        raise ApiError(400, f"to_phone: {route.provider} numbers call phone numbers, not URIs")
    call_service = services.call_service
    try:
        record = await call_service.create(
            agent_id=agent_id,
            provider=route.provider,
            direction="outbound",
            from_=from_phone,
            to=to_phone,
            agent_config=agent_config,
            metadata=metadata,
            include_metadata_in_prompt=include,
            session_id=session_id,
            region=route.region_name,
        )
    except CallRejected as exc:
        raise ApiError(exc.http_status, exc.reason) from None
    try:
        provider_call_id = await provider.dial(record)
    except NotSupported as exc:
        await call_service.update_provider_status(record.call_id, "failed")
        raise ApiError(400, str(exc), call_id=record.call_id) from None
    except ProviderError as exc:
        log.warning("outbound call not placed: %s", exc, extra={"call_id": record.call_id})
        await call_service.update_provider_status(record.call_id, "failed")
        status = 400 if exc.status == 400 else 502
        raise ApiError(status, str(exc), call_id=record.call_id, provider_code=exc.code) from None
    record.provider_call_id = provider_call_id
    await services.coordinator.update_call(record.call_id, {"provider_call_id": provider_call_id})
    log.info(
        "outbound call placed",
        extra={"call_id": record.call_id, "provider_call_id": provider_call_id},
    )
    return web.json_response({"call_id": record.call_id, "provider_call_id": provider_call_id})


async def hangup_call(request: web.Request) -> web.Response:
    """``POST /calls/{call_id}/hangup``: end the call (``api-ended``)."""
    _authorize(request)
    call_id = request.match_info["call_id"]
    try:
        found = await request.app[SERVICES].call_service.hangup(call_id)
    except NotSupported as exc:
        raise ApiError(409, str(exc)) from None
    except ControlFailed as exc:
        raise ApiError(exc.http_status, exc.reason, call_id=call_id) from None
    except ProviderError as exc:
        raise ApiError(502, str(exc), provider_code=exc.code) from None
    if not found:
        raise ApiError(404, f"no live call {call_id}")
    return web.json_response({"call_id": call_id, "result": "hanging up"})


async def transfer_call(request: web.Request) -> web.Response:
    """``POST /calls/{call_id}/transfer`` ``{"destination": "+1…" | "sip:…"}``."""
    _authorize(request)
    call_id = request.match_info["call_id"]
    body = await _json_object(request)
    raw = _string(body, "destination")
    assert raw is not None
    try:
        destination = normalize_destination(raw)
    except ValueError as exc:
        raise ApiError(400, f"destination: {exc}") from None
    try:
        found = await request.app[SERVICES].call_service.transfer(call_id, destination)
    except NotSupported as exc:
        raise ApiError(409, str(exc)) from None
    except ControlFailed as exc:
        raise ApiError(exc.http_status, exc.reason, call_id=call_id) from None
    except ProviderError as exc:
        raise ApiError(502, str(exc), provider_code=exc.code) from None
    if not found:
        raise ApiError(404, f"no live call {call_id}")
    return web.json_response({"call_id": call_id, "result": "transferring", "to": destination})


async def get_call(request: web.Request) -> web.Response:
    """``GET /calls/{call_id}``: the call record."""
    _authorize(request)
    call_id = request.match_info["call_id"]
    record = await request.app[SERVICES].call_service.get(call_id)
    if record is None:
        raise ApiError(404, f"no call {call_id}")
    return web.json_response(call_view(record))


MAX_DEAD_LETTERS_LISTED = 1000


async def list_dead_letters(request: web.Request) -> web.Response:
    """``GET /webhooks/dead-letters?limit=N``: end-of-call webhooks given up on, newest first.

    Neither the body nor the webhook's headers are shown (the operator's
    credentials; the call is at ``GET /calls/{id}`` while its record lasts).
    """
    _authorize(request)
    raw = request.query.get("limit", "100")
    try:
        limit = int(raw)
    except ValueError:
        raise ApiError(400, f"limit must be a whole number, got {raw!r}") from None
    if not 1 <= limit <= MAX_DEAD_LETTERS_LISTED:
        raise ApiError(400, f"limit must be between 1 and {MAX_DEAD_LETTERS_LISTED}")
    coordinator = request.app[SERVICES].coordinator
    letters = await coordinator.dead_letters(SESSION_WEBHOOK_QUEUE, limit)
    count = await coordinator.dead_letter_count(SESSION_WEBHOOK_QUEUE)
    return web.json_response(
        {
            "count": count,
            "dead_letters": [
                {
                    "call_id": letter.job_id,
                    "url": letter.data.get("url"),
                    "attempts": letter.attempts,
                    "reason": letter.reason,
                    "dead_at": letter.dead_at,
                }
                for letter in letters
            ],
        }
    )


async def retry_dead_letter(request: web.Request) -> web.Response:
    """``POST /webhooks/dead-letters/{call_id}/retry``: queue it again, attempts from zero."""
    _authorize(request)
    call_id = request.match_info["call_id"]
    coordinator = request.app[SERVICES].coordinator
    if not await coordinator.retry_dead_letter(SESSION_WEBHOOK_QUEUE, call_id):
        raise ApiError(404, f"no dead-lettered webhook for call {call_id}")
    log.info("dead-lettered session webhook queued again", extra={"call_id": call_id})
    return web.json_response({"call_id": call_id, "result": "queued"})


#: states a live call can be listed in (ended calls are not indexed)
_LISTABLE_STATES = frozenset(str(s) for s in CallState if s is not CallState.ENDED)
MAX_PAGE = 500
#: Calls of a ``GET /calls`` page turned into views between two yields to the event loop.
VIEW_BATCH = 25
DEFAULT_PAGE = 100
_MAX_QUERY_VALUE = 200


def _query_value(request: web.Request, name: str) -> str | None:
    values = request.query.getall(name, [])
    if not values:
        return None
    if len(values) > 1 or not values[0] or len(values[0]) > _MAX_QUERY_VALUE:
        raise ApiError(400, f"{name} must be given once, 1-{_MAX_QUERY_VALUE} characters")
    return values[0]


async def list_calls(request: web.Request) -> web.Response:
    """``GET /calls?state=active[&worker=…][&region=…][&limit=N][&cursor=C]``: live calls.

    From the coordinator's index of live calls, so every worker answers the
    same. Ordered by call id; ``next_cursor`` (null on the last page) is
    stable while calls come and go.
    """
    _authorize(request)
    unknown = set(request.query) - {"state", "worker", "region", "limit", "cursor"}
    if unknown:
        raise ApiError(400, f"unknown query parameter(s): {', '.join(sorted(unknown))}")
    state = _query_value(request, "state") or str(CallState.ACTIVE)
    if state not in _LISTABLE_STATES:
        raise ApiError(400, f"state must be one of {', '.join(sorted(_LISTABLE_STATES))}")
    where: dict[str, Any] = {"state": state}
    worker = _query_value(request, "worker")
    if worker is not None:
        where["owner"] = worker
    region = _query_value(request, "region")
    if region is not None:
        where["region"] = region
    raw_limit = _query_value(request, "limit")
    limit = DEFAULT_PAGE
    if raw_limit is not None:
        if (
            not raw_limit.isascii()
            or not raw_limit.isdigit()
            or not 1 <= int(raw_limit) <= MAX_PAGE
        ):
            raise ApiError(400, f"limit must be an integer from 1 to {MAX_PAGE}")
        limit = int(raw_limit)
    cursor = _query_value(request, "cursor")
    page, next_cursor = await request.app[SERVICES].coordinator.page_active_calls(
        where=where, after=cursor, limit=limit
    )
    calls = []
    for n, (_, doc) in enumerate(page, 1):
        calls.append(call_view(CallRecord.from_dict(doc.data)))
        if n % VIEW_BATCH == 0:
            await asyncio.sleep(0)  # a page of 500 is ~50 ms of views: a few at a time
    return web.json_response({"calls": calls, "next_cursor": next_cursor})


async def agent_core_heartbeat(request: web.Request) -> web.Response:
    """``POST /agent-cores/heartbeat`` ``{"url", "region", "load"?, "capacity"?}``.

    An agent core announces itself to its region's pool for
    ``AGENT_CORE_HEARTBEAT_TTL_S`` seconds (send one every few seconds); every
    worker learns it from the coordinator with its own heartbeat. Why through
    the coordinator: the request lands on one worker, the pool is every worker's.
    """
    _authorize(request)
    body = await _json_object(request)
    url, region = _string(body, "url"), _string(body, "region")
    if not url or not url.startswith(("ws://", "wss://")):
        raise ApiError(400, "url: a ws:// or wss:// URL of the agent core")
    services = request.app[SERVICES]
    if not region or region not in services.settings.regions:
        raise ApiError(400, f"region: one of {sorted(services.settings.regions)}")
    info: dict[str, Any] = {"url": url, "region": region}
    for name in ("load", "capacity"):
        value = body.get(name)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ApiError(400, f"{name}: a number >= 0")
            info[name] = value
    await services.coordinator.heartbeat(
        AGENT_CORE_PREFIX + url, info, ttl=AGENT_CORE_HEARTBEAT_TTL_S
    )
    return web.json_response({"registered": url, "ttl_s": AGENT_CORE_HEARTBEAT_TTL_S})


def add_api_routes(app: web.Application) -> None:
    """Mount the public API on ``app``."""
    app.router.add_post(START_OUTBOUND_PATH, _json_errors(start_outbound_call))
    app.router.add_post("/calls/{call_id}/hangup", _json_errors(hangup_call))
    app.router.add_post("/calls/{call_id}/transfer", _json_errors(transfer_call))
    app.router.add_get("/calls", _json_errors(list_calls))
    app.router.add_get("/calls/{call_id}", _json_errors(get_call))
    app.router.add_get("/webhooks/dead-letters", _json_errors(list_dead_letters))
    app.router.add_post("/webhooks/dead-letters/{call_id}/retry", _json_errors(retry_dead_letter))
    app.router.add_post("/agent-cores/heartbeat", _json_errors(agent_core_heartbeat))
