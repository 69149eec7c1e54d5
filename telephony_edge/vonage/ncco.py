"""The NCCOs the answer webhook returns, built with the SDK's models (``vonage_voice``).

Building them from the SDK's pydantic models, rather than by hand, keeps
field names and allowed values (``content-type``, ``from``) as Vonage's own
SDK spells them.
"""

from __future__ import annotations

from typing import Any

from vonage_voice.models.connect_endpoints import PhoneEndpoint, SipEndpoint, WebsocketEndpoint
from vonage_voice.models.ncco import Connect, NccoAction, Talk

CONTENT_TYPE = "audio/l16;rate=16000"
WS_PATH = "/vonage/ws"
UNKNOWN_NUMBER_MESSAGE = "Sorry, this number is not in service. Goodbye."
UNAVAILABLE_MESSAGE = "Sorry, all agents are busy. Please call again later. Goodbye."
OUTAGE_MESSAGE = "Sorry, we cannot take your call right now. Please call again later. Goodbye."
GONE_MESSAGE = "Sorry, this call can no longer be connected. Goodbye."


def ws_url(public_url: str) -> str:
    """``wss://host/vonage/ws`` for an https public URL, ``ws://`` for http."""
    base = public_url.rstrip("/")
    if base.startswith("https://"):
        return "wss://" + base[len("https://") :] + WS_PATH
    if base.startswith("http://"):
        return "ws://" + base[len("http://") :] + WS_PATH
    raise ValueError(f"public URL {public_url!r} is not http(s)")


def _dump(actions: list[NccoAction]) -> list[dict[str, Any]]:
    return [a.model_dump(by_alias=True, exclude_none=True, mode="json") for a in actions]


def _vonage_number(e164: str) -> str:
    """Vonage writes numbers without the ``+``."""
    return e164.removeprefix("+")


def connect_websocket(
    uri: str, headers: dict[str, str], from_number: str, event_url: str | None = None
) -> list[dict[str, Any]]:
    """``connect`` to our audio WebSocket: L16 16 kHz, the call token in the headers.

    ``event_url``: where Vonage reports the socket leg's own events (its
    ``uuid`` is not the call's), so the event webhook finds the call by it.
    """
    endpoint = WebsocketEndpoint(uri=uri, contentType=CONTENT_TYPE, headers=headers)
    connect = (
        Connect(endpoint=[endpoint], from_=_vonage_number(from_number))
        if event_url is None
        else Connect(endpoint=[endpoint], from_=_vonage_number(from_number), eventUrl=[event_url])
    )
    return _dump([connect])


def talk(text: str) -> list[dict[str, Any]]:
    """Say ``text`` and end (an NCCO with nothing after ``talk`` hangs up)."""
    return _dump([Talk(text=text)])


def connect_destination(destination: str, from_number: str) -> list[dict[str, Any]]:
    """A transfer's NCCO: ``connect`` to an E.164 number or a SIP URI."""
    endpoint: PhoneEndpoint | SipEndpoint
    if destination.startswith("+"):
        endpoint = PhoneEndpoint(number=_vonage_number(destination))
    else:
        endpoint = SipEndpoint(uri=destination)
    return _dump([Connect(endpoint=[endpoint], from_=_vonage_number(from_number))])
