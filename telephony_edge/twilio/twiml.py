"""The TwiML documents the edge answers with, built by the twilio library.

Kept apart from the handlers so the exact documents are easy to read, test,
and keep consistent with the templates in ``twiml/``.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from urllib.parse import urlencode

from twilio.twiml.voice_response import Connect, Dial, Redirect, VoiceResponse

from telephony_edge.routing import normalize_destination

STREAM_PATH = "/twilio/stream"
#: where a call's ``<Redirect>`` after its stream leads (``telephony_edge.twilio.resume``)
RESUME_PATH = "/twilio/resume"
UNKNOWN_NUMBER_MESSAGE = (
    "Sorry, this number is not connected to an assistant right now. "
    "Please try again later. Goodbye."
)
OUTAGE_MESSAGE = (
    "Sorry, we cannot take your call right now because of a technical problem. "
    "Please call again in a few minutes. Goodbye."
)
UNAVAILABLE_MESSAGE = "Sorry, all our assistants are busy right now. Please call again later."


def stream_url(public_url: str) -> str:
    """The Media Streams WebSocket URL of an edge reachable at ``public_url``.

    Twilio only connects to ``wss://``; an ``http://`` base (local runs, the
    simulator) maps to ``ws://``.
    """
    base = public_url.rstrip("/")
    if base.startswith("https://"):
        base = "wss://" + base.removeprefix("https://")
    elif base.startswith("http://"):
        base = "ws://" + base.removeprefix("http://")
    return base + STREAM_PATH


def resume_url(public_url: str, call_id: str, hop: int = 0, generation: int = 0) -> str:
    """The ``<Redirect>`` that follows a call's stream: any worker answers it when the
    stream ends without the call ending (its worker was lost, or moved the call).

    ``n`` makes each one single-use (a replayed request is refused); ``hop`` counts the
    redirects since the call last streamed, ``g`` the generation the stream it follows
    would take over from (a generation past it: that stream held, the count starts
    again), so a call no worker takes does not loop.
    """
    query = {"call_id": call_id, "hop": str(hop), "g": str(generation)}
    query["n"] = secrets.token_urlsafe(12)
    return f"{public_url.rstrip('/')}{RESUME_PATH}?{urlencode(query)}"


def connect_stream(
    url: str,
    parameters: Mapping[str, str],
    *,
    status_callback: str | None = None,
    then_redirect: str | None = None,
) -> str:
    """``<Connect><Stream url>`` with one ``<Parameter>`` per item (bidirectional stream).

    ``status_callback``: where Twilio POSTs the stream's events (``StreamEvent``
    stream-started / stream-stopped / stream-error, with ``StreamError``).
    ``then_redirect``: a ``<Redirect>`` after it, which Twilio follows when the stream
    ends and the call does not (Twilio goes on with the TwiML after ``<Connect>``).
    """
    response = VoiceResponse()
    response.append(connect_element(url, parameters, status_callback=status_callback))
    if then_redirect is not None:
        response.append(resume_redirect(then_redirect))
    return str(response.to_xml())


def resume_redirect(url: str) -> Redirect:
    """The ``<Redirect>`` to :func:`resume_url`, a GET: its worker is lost the moment it comes,
    so the load balancer may have to try another one, and a request without a body is one
    any balancer can send again (Caddy, for one, cannot replay a POST's body)."""
    return Redirect(url, method="GET")


def connect_element(
    url: str, parameters: Mapping[str, str], *, status_callback: str | None = None
) -> Connect:
    """The ``<Connect><Stream>`` element of :func:`connect_stream`, for a longer document."""
    connect = Connect()
    if status_callback is None:
        stream = connect.stream(url=url)
    else:
        stream = connect.stream(
            url=url, status_callback=status_callback, status_callback_method="POST"
        )
    for name, value in parameters.items():
        stream.parameter(name=name, value=value)
    return connect


def say_and_hangup(message: str) -> str:
    """A polite sentence, then the end of the call."""
    response = VoiceResponse()
    response.say(message)
    response.hangup()
    return str(response.to_xml())


def hangup() -> str:
    """The end of the call, nothing said (a call that is over when Twilio asks what next)."""
    response = VoiceResponse()
    response.hangup()
    return str(response.to_xml())


def redirect(url: str) -> str:
    """Send the call's webhook to ``url`` (another edge worker that takes calls now)."""
    response = VoiceResponse()
    response.redirect(url, method="POST")
    return str(response.to_xml())


def dial(destination: str) -> str:
    """TwiML that hands the live call to a phone number or a SIP URI."""
    target = normalize_destination(destination)
    response = VoiceResponse()
    dial_verb = Dial()
    if target.startswith("+"):
        dial_verb.number(target)
    else:
        dial_verb.sip(target)
    response.append(dial_verb)
    return str(response.to_xml())
