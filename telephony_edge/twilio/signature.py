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
from typing import Any, NoReturn

from aiohttp import web
from multidict import MultiDict, MultiDictProxy
from twilio.request_validator import RequestValidator

from telephony_edge import metrics

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Twilio-Signature"
_REJECTED = metrics.BAD_INPUT.labels(source="twilio-signature")
_UNPARSEABLE = metrics.BAD_INPUT.labels(source="twilio-webhook")


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
        """The request's form fields if its signature is valid (a GET's: its query's, which
        Twilio signs as part of the URL).

        The order matters because the body is the attacker's: a request
        without the signature header is refused (403) before its body is read;
        a body that cannot be parsed (bad UTF-8, a bogus ``charset``, multipart
        without a boundary, ...) is a 400, never a 500; then the signature is
        checked (403).
        """
        signature = request.headers.get(SIGNATURE_HEADER, "")
        if self.enabled and not signature:
            self._reject(request, "missing signature")
        get = request.method == "GET"
        fields = MultiDictProxy(MultiDict[str]()) if get else await parsed_form(request)
        if self.enabled:
            url = public_request_url(self._public_url, request)
            if not self._validator.validate(url, fields, signature):
                self._reject(request, "invalid signature", fields.get("CallSid", ""))
        return MultiDictProxy(MultiDict(request.query)) if get else fields

    @staticmethod
    def _reject(request: web.Request, reason: str, call_sid: str = "") -> NoReturn:
        _REJECTED.inc()
        log.warning(
            "Twilio webhook rejected: %s",
            reason,
            extra={"path": request.path, "call_sid": call_sid},
        )
        raise web.HTTPForbidden(text="invalid Twilio signature\n")


async def parsed_form(request: web.Request) -> MultiDictProxy[str]:
    """The body's text fields; 400 (counted) when aiohttp cannot parse it.

    aiohttp raises UnicodeDecodeError (a ValueError), LookupError (unknown
    charset), ValueError (multipart without a boundary) or RuntimeError
    (unknown transfer encoding) from ``request.post()``; any of them means
    the sender's body is broken, not the edge. Size limits stay aiohttp's
    (413, an HTTPException that passes through).
    """
    try:
        return _strings(await request.post())
    except (ValueError, LookupError, RuntimeError) as exc:
        _UNPARSEABLE.inc()
        log.warning(
            "Twilio webhook body not parseable: %s",
            type(exc).__name__,
            extra={"path": request.path},
        )
        raise web.HTTPBadRequest(text="unparseable form body\n") from None


def _strings(form: MultiDictProxy[Any]) -> MultiDictProxy[str]:
    """Text fields only: file uploads have no place in a Twilio webhook."""
    out: MultiDict[str] = MultiDict()
    for key, value in form.items():
        if isinstance(value, str):
            out.add(key, value)
    return MultiDictProxy(out)
