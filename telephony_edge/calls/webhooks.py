"""The agent's two webhooks: their specs, targets, signatures and the end-of-call payload.

Sending them is elsewhere: :mod:`telephony_edge.calls.prefetch` (before the call)
and :mod:`telephony_edge.calls.dispatcher` (the end-of-call queue's consumer).

Prefetch (agent config ``extra_prompt_webhook``)
    Called before ``initiate``; may add or change session metadata and add an
    ``extra_prompt``. It sits on the call's set-up path, so it is bounded in
    time (default 3 s, at most 10 s) and size (64 KiB), and it never raises:
    any failure gives an empty :class:`~telephony_edge.calls.prefetch.PrefetchResult`
    carrying the reason, and the call goes on without it
    (:mod:`telephony_edge.calls.prefetch`).

End of call (agent config ``session_data_webhook``)
    The payload documented by the platform, built by
    :func:`build_session_payload`, is put on the Coordinator's durable queue
    by :func:`enqueue_session_webhook` (or the outbox, :mod:`telephony_edge.calls.outbox`);
    a :class:`~telephony_edge.calls.dispatcher.WebhookDispatcher` on any worker
    POSTs it. Delivery is at-least-once: a job is acked only after a
    2xx, retried with exponential backoff on 5xx, 408, 429 and network
    errors, and redelivered by another worker if the one sending it dies.
    A job that fails ``max_attempts`` times, or that the receiver refuses
    outright (another 4xx) or the edge may not send (a refused target), is
    moved to the queue's dead letters rather than dropped: counted
    (``telephony_edge_webhook_dead_letters_total``, size in
    ``telephony_edge_webhook_dead_letter_size``), listed by ``GET
    /webhooks/dead-letters`` and re-queued by ``POST
    /webhooks/dead-letters/{call_id}/retry`` once the receiver is fixed.

Both specs are either a URL string or an object
``{"url", "method", "headers", "timeout"}`` (``method`` only for prefetch).

Request headers of the end-of-call POST
---------------------------------------
``Content-Type: application/json``

``Idempotency-Key: <call_id>``
    The same on every retry and redelivery: receivers de-duplicate on it.

``X-Telephony-Edge-Signature: t=<unix seconds>,v1=<hex>`` (when a secret is configured)
    ``<hex>`` is ``HMAC-SHA256(secret, f"{t}.{body}")`` over the exact body
    bytes, as Stripe does. ``t`` is the time of this attempt, so a receiver
    can refuse replays older than a tolerance. To verify, recompute the HMAC
    and compare in constant time (:func:`verify_signature` does it, 300 s
    tolerance). Several ``v1=`` entries may appear during a secret rotation;
    any one matching is enough.

Every outgoing webhook, whoever configured it
---------------------------------------------
The prefetch request is signed the same way whenever a secret is set: the
signed body is its JSON body (POST) or its raw query string, everything after
``?`` (GET). A webhook's own ``headers`` cannot replace the signature (names
compare case-insensitively). A per-call ``agent_config`` may name any URL, so
unless ``webhooks.allow_private_targets`` is set, a target whose host
resolves (the loop's ``getaddrinfo``) to any loopback, private, link-local,
reserved or otherwise non-global address is refused: logged, counted
(``telephony_edge_bad_input_total{source="webhook-target"}`` and the
webhook's ``refused`` outcome), never retried; the call goes on. The request
then connects to the address that was checked (TLS still verifies the host
name), so a second DNS answer cannot point it elsewhere (DNS rebinding), and
redirects are not followed.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
import logging
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from multidict import CIMultiDict
from yarl import URL

from telephony_edge import metrics
from telephony_edge.calls.record import CallRecord
from telephony_edge.coord.base import Coordinator

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Telephony-Edge-Signature"
IDEMPOTENCY_HEADER = "Idempotency-Key"
SESSION_WEBHOOK_QUEUE = "session_webhooks"
#: How often each dispatcher re-reads the dead-letter count for its gauge.
DEAD_LETTER_GAUGE_INTERVAL = 15.0

PREFETCH_TIMEOUT = 3.0
PREFETCH_MAX_TIMEOUT = 10.0
PREFETCH_MAX_BYTES = 64 * 1024
SESSION_TIMEOUT = 10.0
SESSION_MAX_TIMEOUT = 30.0
MIN_TIMEOUT = 0.05
MAX_CHAT_CHARS = 1_000_000
MAX_HEADERS = 32

#: ``on_result(kind, outcome)``: kind is "prefetch" or "session_webhook"; outcomes
#: prefetch: ok, timeout, error, bad_response, refused; session_webhook: delivered,
#: retry, rejected, gave_up, malformed, refused.
ResultHook = Callable[[str, str], None]


def report_result(hook: ResultHook | None, kind: str, outcome: str) -> None:
    if hook is None:
        return
    try:
        hook(kind, outcome)
    except Exception:  # a metrics bug must not break delivery
        logger.exception("webhook result hook failed")


# -- specs -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WebhookSpec:
    url: str
    method: str = "GET"
    headers: Mapping[str, str] = field(default_factory=dict)
    timeout: float = PREFETCH_TIMEOUT


def parse_webhook_spec(
    value: WebhookSpec | str | Mapping[str, Any],
    *,
    default_method: str = "GET",
    default_timeout: float = PREFETCH_TIMEOUT,
    max_timeout: float = PREFETCH_MAX_TIMEOUT,
) -> WebhookSpec:
    """Read an agent-config webhook value (URL string or object); raise ValueError if invalid.

    The timeout is clamped into ``[MIN_TIMEOUT, max_timeout]`` so that no
    config can stall a call or a dispatcher.
    """
    url: object
    method: object
    headers: object
    timeout: object
    if isinstance(value, WebhookSpec):
        url, method, headers, timeout = value.url, value.method, value.headers, value.timeout
    elif isinstance(value, str):
        url, method, headers, timeout = value, default_method, {}, default_timeout
    elif isinstance(value, Mapping):
        url = value.get("url")
        method = value.get("method") or default_method
        headers = value.get("headers") or {}
        timeout = value.get("timeout", default_timeout)
    else:
        raise ValueError(f"webhook must be a URL or an object, not {type(value).__name__}")
    if not isinstance(url, str) or not url.strip():
        raise ValueError("webhook url missing")
    url = url.strip()
    try:
        parsed = URL(url)
    except ValueError as e:
        raise ValueError(f"webhook url invalid: {e}") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError(f"webhook url must be http(s)://host/..., got {url!r}")
    if not isinstance(method, str) or method.upper() not in ("GET", "POST"):
        raise ValueError(f"webhook method must be GET or POST, got {method!r}")
    if not isinstance(headers, Mapping) or len(headers) > MAX_HEADERS:
        raise ValueError(f"webhook headers must be an object of at most {MAX_HEADERS} strings")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items()):
        raise ValueError("webhook header names and values must be strings")
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise ValueError(f"webhook timeout must be a number of seconds, got {timeout!r}")
    timeout = min(max(float(timeout), MIN_TIMEOUT), max_timeout)
    return WebhookSpec(url, method.upper(), dict(headers), timeout)


# -- targets -------------------------------------------------------------------

_REFUSED_TARGETS = metrics.BAD_INPUT.labels(source="webhook-target")


class TargetRefused(Exception):
    """The webhook's host resolves to an address the edge must not call."""


@dataclass(frozen=True, slots=True)
class Target:
    """Where a webhook request goes: ``url`` with its host replaced by the checked address."""

    url: URL
    headers: Mapping[str, str] = field(default_factory=dict)  # Host, when pinned
    server_hostname: str | None = None  # TLS: the name to verify, when pinned


def _global_address(text: str) -> bool:
    address = ipaddress.ip_address(text.partition("%")[0])  # drop an IPv6 scope id
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


async def resolve_target(url: URL, *, allow_private: bool) -> Target:
    """Check where ``url`` leads; raise :class:`TargetRefused` for a non-global address.

    Allowed private targets are left to aiohttp as they are. Otherwise every
    address the name resolves to must be global, and the request is pinned
    to the first one. DNS failures raise OSError (a network error).
    """
    if allow_private or url.host is None:
        return Target(url)
    host = url.host
    infos = await asyncio.get_running_loop().getaddrinfo(host, url.port, type=socket.SOCK_STREAM)
    addresses = [str(info[4][0]) for info in infos]
    for address in addresses:
        if not _global_address(address):
            raise TargetRefused(f"{host} resolves to {address}, not a public address")
    if not addresses:
        raise OSError(f"{host} resolves to no address")
    pinned = url.with_host(addresses[0].partition("%")[0])
    host_header = host if url.is_default_port() else f"{host}:{url.port}"
    tls_name = host if url.scheme == "https" else None
    return Target(pinned, {"Host": host_header}, tls_name)


def refused_target(kind: str, url: str, reason: str, call_id: str, hook: ResultHook | None) -> None:
    _REFUSED_TARGETS.inc()
    logger.warning(
        "%s webhook to %s refused: %s (webhooks.allow_private_targets is off)",
        kind,
        URL(url).with_query(None).with_user(None),
        reason,
        extra={"call_id": call_id},
    )
    report_result(hook, kind, "refused")


def signed_headers(
    secret: str | None, body: bytes, *headers: Mapping[str, str]
) -> CIMultiDict[str]:
    """``headers`` merged in order (later wins, case-insensitively), signed last."""
    merged: CIMultiDict[str] = CIMultiDict()
    for part in headers:
        for name, value in part.items():
            merged[name] = value
    if secret:
        merged[SIGNATURE_HEADER] = sign(secret, body)
    return merged


# -- end-of-call payload -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CostRates:
    """Prices for ``cost_breakdown``, in the operator's currency. Zero unless configured."""

    platform_per_min: float = 0.0
    telephony_per_min: float = 0.0
    stt_per_min: float = 0.0
    tts_per_1k_chars: float = 0.0


def cost_breakdown(duration: int, chars_used: int, rates: CostRates) -> list[dict[str, Any]]:
    """One item per billed service; minutes are ``duration / 60`` (not rounded up)."""
    minutes = duration / 60
    kchars = chars_used / 1000
    items = [
        ("platform", "minute", minutes, rates.platform_per_min),
        ("telephony", "minute", minutes, rates.telephony_per_min),
        ("stt", "minute", minutes, rates.stt_per_min),
        ("tts", "1k_chars", kchars, rates.tts_per_1k_chars),
    ]
    return [
        {
            "type": kind,
            "unit": unit,
            "quantity": round(quantity, 6),
            "rate": rate,
            "cost": round(quantity * rate, 6),
        }
        for kind, unit, quantity, rate in items
    ]


def _chat_json(transcript: Sequence[Mapping[str, Any]], limit: int) -> str:
    """The transcript as a JSON string of at most about ``limit`` chars (latest entries dropped)."""
    entries: list[Mapping[str, Any]] = []
    size = 2
    for entry in transcript:
        size += len(json.dumps(entry, default=str)) + 1
        if size > limit:
            dropped = len(transcript) - len(entries)
            entries.append({"role": "system", "text": f"[{dropped} entries truncated]"})
            break
        entries.append(entry)
    return json.dumps(entries, default=str)


def build_session_payload(
    record: CallRecord,
    *,
    transcript: Sequence[Mapping[str, Any]] = (),
    function_calls: Sequence[Mapping[str, Any]] = (),
    chars_used: int = 0,
    rates: CostRates = CostRates(),
    recording: Mapping[str, Any] | None = None,
    max_chat_chars: int = MAX_CHAT_CHARS,
    truncated: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """The documented end-of-call payload for ``record``.

    ``transcript`` entries (e.g. ``{"role": "user"|"agent", "text": …}``) go
    into ``chat`` as a JSON *string*, as documented. ``ts`` is the call's start
    (answer, else creation) in unix seconds, the same start ``duration`` counts from.
    ``truncated`` counts entries left out past the edge's bounds (``chat``,
    ``function_calls``); the payload carries it only when something was.
    ``migrations`` (one ``{from_worker, to_worker, gap_ms, cause}`` per move to
    another worker, ``calls.migration``) likewise only when the call moved.
    """
    duration = record.duration
    start = record.answered_at or record.created_at
    return {
        "call_id": record.call_id,
        "session_id": record.session_id,
        "agent_id": record.agent_id,
        "agent_config": without_webhook_headers(record.agent_config),
        "ts": int(start),
        "duration": duration,
        "call_status": None if record.call_status is None else str(record.call_status),
        "error_message": record.error_message,
        "metadata": record.metadata,
        "voip": {
            "provider": record.provider,
            "from": record.from_,
            "to": record.to,
            "provider_call_id": record.provider_call_id,
            "direction": record.direction,
            **({"details": record.provider_details} if record.provider_details else {}),
            **({"media": record.media_stats} if record.media_stats else {}),
            **({"amd": record.amd} if record.amd else {}),
        },
        "recording": None if recording is None else dict(recording),
        "function_calls": [dict(fc) for fc in function_calls],
        "chat": _chat_json(transcript, max_chat_chars),
        "chars_used": int(chars_used),
        "cost_breakdown": cost_breakdown(duration, chars_used, rates),
        **({"truncated": dict(truncated)} if truncated else {}),
        **({"migrations": [dict(m) for m in record.migrations]} if record.migrations else {}),
    }


_WEBHOOK_KEYS = ("extra_prompt_webhook", "session_data_webhook")


def without_webhook_headers(agent_config: Mapping[str, Any]) -> dict[str, Any]:
    """The agent config minus the webhooks' headers: those carry the operator's credentials."""
    config = dict(agent_config)
    for key in _WEBHOOK_KEYS:
        spec = config.get(key)
        if isinstance(spec, Mapping) and "headers" in spec:
            config[key] = {k: v for k, v in spec.items() if k != "headers"}
    return config


def session_webhook_job(
    spec: WebhookSpec | str | Mapping[str, Any], payload: Mapping[str, Any]
) -> dict[str, Any]:
    """The end-of-call POST as a queue job (its id: the call id).

    Raises ValueError for an invalid spec (a config error the caller logs).
    The body is serialised here, once, so every retry sends the same bytes.
    """
    hook = parse_webhook_spec(
        spec,
        default_method="POST",
        default_timeout=SESSION_TIMEOUT,
        max_timeout=SESSION_MAX_TIMEOUT,
    )
    return {
        "call_id": str(payload["call_id"]),
        "url": hook.url,
        "headers": dict(hook.headers),
        "timeout": hook.timeout,
        "body": json.dumps(payload, separators=(",", ":"), default=str),
    }


async def enqueue_session_webhook(
    coordinator: Coordinator,
    spec: WebhookSpec | str | Mapping[str, Any],
    payload: Mapping[str, Any],
    *,
    queue: str = SESSION_WEBHOOK_QUEUE,
) -> bool:
    """Queue the end-of-call POST; job id is the call id, so it is queued once per call."""
    job = session_webhook_job(spec, payload)
    call_id = job["call_id"]
    queued = await coordinator.enqueue(queue, call_id, job)
    logger.info(
        "session webhook %s", "queued" if queued else "already queued", extra={"call_id": call_id}
    )
    return queued


# -- signatures ----------------------------------------------------------------


def _as_bytes(body: bytes | str) -> bytes:
    return body.encode() if isinstance(body, str) else body


def _hmac_hex(secret: str, timestamp: int, body: bytes) -> str:
    signed = str(timestamp).encode() + b"." + body
    return hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes | str, *, timestamp: int | None = None) -> str:
    """The ``X-Telephony-Edge-Signature`` header value for ``body``."""
    t = int(time.time()) if timestamp is None else timestamp
    return f"t={t},v1={_hmac_hex(secret, t, _as_bytes(body))}"


def verify_signature(
    secret: str,
    header: str,
    body: bytes | str,
    tolerance_s: float = 300,
    *,
    now: float | None = None,
) -> bool:
    """Whether ``header`` signs ``body`` with ``secret`` within ``tolerance_s`` of ``now``."""
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            continue
        if key == "t":
            try:
                timestamp = int(value)
            except ValueError:
                return False
        elif key == "v1":
            candidates.append(value)
    if timestamp is None or not candidates:
        return False
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_s:
        return False
    expected = _hmac_hex(secret, timestamp, _as_bytes(body))
    # Compare against every candidate so the time taken does not tell which matched.
    matches = [hmac.compare_digest(expected.encode(), c.encode()) for c in candidates]
    return any(matches)
