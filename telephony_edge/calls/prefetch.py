"""The prefetch webhook: called before ``initiate``, bounded, never failing the call.

See :mod:`telephony_edge.calls.webhooks` for the spec, the signature and the
target rules it shares with the end-of-call webhook.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from yarl import URL

from telephony_edge import tracing
from telephony_edge.calls.variables import variable_value
from telephony_edge.calls.webhooks import (
    PREFETCH_MAX_BYTES,
    ResultHook,
    TargetRefused,
    WebhookSpec,
    parse_webhook_spec,
    refused_target,
    report_result,
    resolve_target,
    signed_headers,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PrefetchResult:
    """What the prefetch webhook gave; empty with ``error`` set when it failed."""

    metadata: dict[str, Any] = field(default_factory=dict)
    extra_prompt: str = ""
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def merged_metadata(self, current: Mapping[str, Any]) -> dict[str, Any]:
        """``current`` with this result's keys updated and added (the documented rule)."""
        return {**current, **self.metadata}


def prefetch_params(
    *, session_id: str, agent_id: str, from_: str, to: str, metadata: Mapping[str, Any]
) -> dict[str, str]:
    """The query of the prefetch request. The documented fields win over same-named metadata."""
    params = {str(k): variable_value(v) for k, v in metadata.items()}
    params.update(session_id=session_id, agent_id=agent_id, to=to)
    params["from"] = from_
    return params


async def _read_bounded(resp: aiohttp.ClientResponse, limit: int) -> bytes | None:
    """The body, or None if it is longer than ``limit`` bytes (reading stops there)."""
    if resp.content_length is not None and resp.content_length > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(16 * 1024):
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


async def prefetch(
    session: aiohttp.ClientSession,
    spec: WebhookSpec | str | Mapping[str, Any],
    *,
    session_id: str,
    agent_id: str,
    from_: str,
    to: str,
    metadata: Mapping[str, Any],
    call_id: str = "",
    on_result: ResultHook | None = None,
    secret: str | None = None,
    allow_private_targets: bool = False,
) -> PrefetchResult:
    """Call the prefetch webhook; never raises and never takes longer than its timeout.

    GET sends the fields as the query string; POST sends them as a JSON
    object body instead. Signed when ``secret`` is set; private targets
    refused unless allowed (see the module's docstring).
    """
    log_extra = {"call_id": call_id}

    def fail(outcome: str, reason: str) -> PrefetchResult:
        logger.warning("prefetch webhook failed: %s", reason, extra=log_extra)
        report_result(on_result, "prefetch", outcome)
        return PrefetchResult(error=reason)

    try:
        hook = parse_webhook_spec(spec)
    except ValueError as e:
        return fail("error", f"bad webhook config: {e}")
    fields = prefetch_params(
        session_id=session_id, agent_id=agent_id, from_=from_, to=to, metadata=metadata
    )
    url = URL(hook.url)
    if hook.method == "GET":
        url = url.extend_query(fields)
        data, signed = None, url.raw_query_string.encode()
    else:
        data = signed = json.dumps(fields).encode()
    accept = {"Accept": "application/json", **tracing.headers()}  # the call's set-up span
    if data is not None:
        accept["Content-Type"] = "application/json"
    started = time.monotonic()
    try:
        async with asyncio.timeout(hook.timeout):
            target = await resolve_target(url, allow_private=allow_private_targets)
            async with session.request(
                hook.method,
                target.url,
                data=data,
                headers=signed_headers(secret, signed, accept, hook.headers, target.headers),
                server_hostname=target.server_hostname,
                timeout=aiohttp.ClientTimeout(total=hook.timeout),
                allow_redirects=False,
            ) as resp:
                status = resp.status
                body = await _read_bounded(resp, PREFETCH_MAX_BYTES)
    except TargetRefused as e:
        refused_target("prefetch", hook.url, str(e), call_id, on_result)
        return PrefetchResult(error=str(e))
    except TimeoutError:
        return fail("timeout", f"timed out after {hook.timeout:g} s")
    except (aiohttp.ClientError, OSError) as e:
        return fail("error", f"request failed: {type(e).__name__}: {e}")
    except Exception as e:  # never raise into the call
        logger.exception("prefetch webhook crashed", extra=log_extra)
        return fail("error", f"unexpected error: {type(e).__name__}")

    if not 200 <= status < 300:
        return fail("error", f"http status {status}")
    if body is None:
        return fail("bad_response", f"response larger than {PREFETCH_MAX_BYTES} bytes")
    if not body.strip():
        report_result(on_result, "prefetch", "ok")
        return PrefetchResult()
    try:
        data = json.loads(body)
    except ValueError:
        return fail("bad_response", "response is not JSON")
    if not isinstance(data, dict):
        return fail("bad_response", "response JSON is not an object")
    new_metadata = data.get("metadata") or {}
    extra_prompt = data.get("extra_prompt") or ""
    if not isinstance(new_metadata, dict) or not isinstance(extra_prompt, str):
        return fail("bad_response", "metadata must be an object and extra_prompt a string")
    logger.info(
        "prefetch webhook ok in %.0f ms (%d metadata keys, %d prompt chars)",
        (time.monotonic() - started) * 1000,
        len(new_metadata),
        len(extra_prompt),
        extra=log_extra,
    )
    report_result(on_result, "prefetch", "ok")
    return PrefetchResult(metadata=new_metadata, extra_prompt=extra_prompt)
