"""Checking ``X-Twilio-Signature`` on Twilio's webhooks.

Twilio signs the URL it requested (scheme, host, path and query) followed by
the sorted form fields, with the account's auth token. Behind a proxy or a
load balancer the edge sees a local URL, not the one Twilio signed, so the
URL is rebuilt from the configured *public* URL plus the request's path and
query. The twilio library's :class:`RequestValidator` does the hashing (it
also tries the URL with and without the default port, as Twilio does).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from aiohttp import web
from multidict import MultiDict, MultiDictProxy
from twilio.request_validator import RequestValidator

from telephony_edge import metrics

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Twilio-Signature"
_REJECTED = metrics.BAD_INPUT.labels(source="twilio-signature")


def public_request_url(public_url: str, request: web.BaseRequest) -> str:
    """The URL Twilio requested: the public base plus this request's path and query."""
    return public_url.rstrip("/") + str(request.rel_url)


def compute_signature(auth_token: str, url: str, params: Mapping[str, str]) -> str:
    """The signature Twilio would send for a form POST of ``params`` to ``url``."""
    return str(RequestValidator(auth_token).compute_signature(url, dict(params)))


class SignatureChecker:
    """Verifies Twilio's webhook signatures against the public URL."""

    def __init__(self, auth_token: str, public_url: str, enabled: bool = True) -> None:
        self._validator = RequestValidator(auth_token)
        self._public_url = public_url
        self.enabled = enabled

    async def form(self, request: web.Request) -> MultiDictProxy[str]:
        """The request's form fields if its signature is valid; 403 otherwise."""
        fields = _strings(await request.post())
        if not self.enabled:
            return fields
        signature = request.headers.get(SIGNATURE_HEADER, "")
        url = public_request_url(self._public_url, request)
        if not signature or not self._validator.validate(url, fields, signature):
            _REJECTED.inc()
            log.warning(
                "Twilio webhook rejected: %s signature",
                "missing" if not signature else "invalid",
                extra={"path": request.path, "call_sid": fields.get("CallSid", "")},
            )
            raise web.HTTPForbidden(text="invalid Twilio signature\n")
        return fields


def _strings(form: MultiDictProxy[Any]) -> MultiDictProxy[str]:
    """Text fields only: file uploads have no place in a Twilio webhook."""
    out: MultiDict[str] = MultiDict()
    for key, value in form.items():
        if isinstance(value, str):
            out.add(key, value)
    return MultiDictProxy(out)
