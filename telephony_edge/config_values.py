"""The value types of the settings: phone numbers (E.164), URLs, header maps, networks.

Each is an ``Annotated`` type whose validator says what is wrong in one line, so a
bad value in the file or the environment stops the start naming the key.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Literal

from pydantic import AfterValidator

from telephony_edge.coord.redis_url import check_redis_url

_E164 = re.compile(r"^\+[1-9]\d{1,14}$")
_FORMATTING = re.compile(r"[\s().\-/]")


def normalize_e164(number: str) -> str:
    """Return a number people wrote (configuration, API) as E.164, or raise ValueError.

    It must carry its country code: ``+`` (or the ``00`` international
    prefix) and the digits; spaces, dashes, dots, slashes and brackets are
    fine. Without a country code it is an error, not a guess: ``(415)
    555-0100`` is not ``+4155550100``, and a mistake here routes calls to
    the wrong country.
    """
    if "(0)" in number.replace(" ", ""):
        raise ValueError(f"{number!r}: leave out the (0), dialled only within the country")
    digits = _FORMATTING.sub("", number.strip())
    if digits.startswith("00"):
        digits = "+" + digits[2:]
    elif digits.isdigit():
        raise ValueError(
            f"{number!r} has no country code: write it with + and the country code, "
            "e.g. +1 415 555 0100"
        )
    if not _E164.match(digits):
        raise ValueError(f"{number!r} is not an E.164 phone number (+ and 2-15 digits)")
    return digits


def normalize_network_number(number: str) -> str:
    """Return a number a *network* sent as E.164, or raise ValueError.

    Lenient where :func:`normalize_e164` is strict: some trunks send the
    international digits without the ``+`` (e.g. ``14155550100`` in a SIP
    Request-URI), so bare digits count as if ``+`` were there. Only for
    numbers networks send, to route a call (``NumberRouter.lookup``); never
    for what people write.
    """
    digits = _FORMATTING.sub("", number.strip())
    if digits.isdigit() and not digits.startswith("0"):
        return normalize_e164("+" + digits)
    return normalize_e164(number)


def http_url(value: str) -> str:
    return check_url(value, ("http", "https"))


def ws_url(value: str) -> str:
    return check_url(value, ("ws", "wss"))


def check_url(value: str, schemes: tuple[str, ...]) -> str:
    from yarl import URL

    try:
        url = URL(value)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{value!r} is not a URL: {exc}") from None
    if url.scheme not in schemes or not url.host:
        raise ValueError(f"{value!r} is not an absolute {'/'.join(schemes)} URL")
    host = url.raw_host or ""
    if len(host) > 253 or any(len(label) > 63 for label in host.split(".")):
        raise ValueError(f"{value!r}: a host name label is longer than 63 (RFC 1035)")
    return value.rstrip("/")


_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 token


def check_headers(headers: dict[str, str]) -> dict[str, str]:
    """Headers a request can carry: a value with CR, LF or NUL would never be sent."""
    for name, value in headers.items():
        if not _HEADER_NAME.fullmatch(name):
            raise ValueError(f"header name {name!r} is not an HTTP token")
        if any(c in value for c in "\r\n\0"):
            raise ValueError(f"header {name}: its value holds CR, LF or NUL")
    return headers


HttpUrl = Annotated[str, AfterValidator(http_url)]
WsUrl = Annotated[str, AfterValidator(ws_url)]
PhoneNumber = Annotated[str, AfterValidator(normalize_e164)]
RedisUrl = Annotated[str, AfterValidator(check_redis_url)]


def network(value: str) -> str:
    try:
        return str(ipaddress.ip_network(value, strict=False))
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address or CIDR network") from None


Network = Annotated[str, AfterValidator(network)]
ClientAddressHeader = Literal["x-forwarded-for", "forwarded"]
Headers = Annotated[dict[str, str], AfterValidator(check_headers)]
