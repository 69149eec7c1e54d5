"""The NCCOs the answer webhook returns, built with the SDK's models (``vonage_voice``).

A call this edge streams is answered ``connect`` (websocket) then ``notify``
(:func:`connect_then_resume`): Vonage runs an NCCO's actions in order, the
next once the one before finished, and a websocket ``connect`` finishes when
its socket closes while the call goes on. The ``notify`` then asks any worker
what next (``telephony_edge.vonage.resume``), whose answer replaces the rest.

Building them from the SDK's pydantic models, rather than by hand, keeps
field names and allowed values (``content-type``, ``from``) as Vonage's own
SDK spells them.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from vonage_voice.models.connect_endpoints import PhoneEndpoint, SipEndpoint, WebsocketEndpoint
from vonage_voice.models.ncco import Connect, NccoAction, Notify, Talk

CONTENT_TYPE = "audio/l16;rate=16000"
WS_PATH = "/vonage/ws"
RESUME_PATH = "/vonage/resume"
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


def resume_url(public_url: str, call_id: str, hop: int = 0, generation: int = 0) -> str:
    """The ``notify`` after a call's ``connect``: ``hop`` counts the notifies since the call
    last had a socket that held, ``g`` the generation the socket before it would take over
    from (a generation past it: that socket held, the count starts again)."""
    query = {"call_id": call_id, "hop": str(hop), "g": str(generation)}
    return f"{public_url.rstrip('/')}{RESUME_PATH}?{urlencode(query)}"


def _dump(actions: list[NccoAction]) -> list[dict[str, Any]]:
    return [a.model_dump(by_alias=True, exclude_none=True, mode="json") for a in actions]


def _vonage_number(e164: str) -> str:
    """Vonage writes numbers without the ``+``."""
    return e164.removeprefix("+")


def _connect(uri: str, headers: dict[str, str], from_number: str, event_url: str | None) -> Connect:
    endpoint = WebsocketEndpoint(uri=uri, contentType=CONTENT_TYPE, headers=headers)
    if event_url is None:
        return Connect(endpoint=[endpoint], from_=_vonage_number(from_number))
    return Connect(endpoint=[endpoint], from_=_vonage_number(from_number), eventUrl=[event_url])


def connect_websocket(
    uri: str, headers: dict[str, str], from_number: str, event_url: str | None = None
) -> list[dict[str, Any]]:
    """``connect`` to our audio WebSocket: L16 16 kHz, the call token in the headers.

    ``event_url``: where Vonage reports the socket leg's own events (its
    ``uuid`` is not the call's), so the event webhook finds the call by it.
    """
    return _dump([_connect(uri, headers, from_number, event_url)])


def connect_then_resume(
    uri: str, headers: dict[str, str], from_number: str, event_url: str, resume_url: str
) -> list[dict[str, Any]]:
    """:func:`connect_websocket`, then a ``notify`` to ``resume_url`` (see the module
    docstring): what carries the call on when its socket ends without the call ending."""
    connect = _connect(uri, headers, from_number, event_url)
    # GET: the request carries no body, so a proxy retries it on another worker as it is
    notify = Notify(payload={"after": "websocket"}, eventUrl=[resume_url], eventMethod="GET")
    return _dump([connect, notify])


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
