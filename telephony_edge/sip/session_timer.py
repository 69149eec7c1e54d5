"""Session timers (RFC 4028), the UAS's side: what to answer, and when to refresh or give up.

:func:`negotiate` reads an INVITE, re-INVITE or UPDATE (``Session-Expires``,
``Min-SE``, ``Supported: timer``) and says what the edge's 2xx carries:
the interval, who refreshes (the request's ``refresher`` kept; without one,
the caller when it supports timers, else the edge), ``Require: timer`` when
the caller supports them. Too short an interval is 422 with our ``Min-SE``
if the caller supports timers, else raised to it (§9). Without
``Session-Expires`` the edge imposes ``default`` on a caller that supports
timers, and runs none for one that does not (§9: the timer is off; a
refresh without the header turns it off too).

:class:`SessionTimer` is the running timer of one dialog: the edge as
refresher refreshes at half the interval (§10); the caller as refresher
must refresh before ``interval - min(32, interval / 3)`` passes, else the
edge sends BYE (§10). The :class:`~telephony_edge.sip.ua.UserAgent` keeps
it per call and restarts it on every successful refresh, either way.
"""

from __future__ import annotations

from dataclasses import dataclass

from telephony_edge.sip.message import Request, Response
from telephony_edge.sip.transaction import Key
from telephony_edge.sip.uri import parse_params


@dataclass(frozen=True, slots=True)
class Negotiated:
    interval: int
    refresher: str  # "uac" | "uas": who refreshes, named as in the dialog-forming INVITE
    require: bool  # the caller supports timers: our 2xx carries Require: timer

    def headers(self) -> list[tuple[str, str]]:
        out = [("Session-Expires", f"{self.interval};refresher={self.refresher}")]
        return [*out, ("Require", "timer")] if self.require else out


@dataclass(frozen=True, slots=True)
class TooSmall:
    """422 Session Interval Too Small, with our Min-SE."""

    min_se: int


def supports_timer(message: Request | Response) -> bool:
    values = message.headers.get_all("Supported") + message.headers.get_all("Require")
    return any(v.strip().lower() == "timer" for v in values)


def session_expires(message: Request | Response) -> tuple[int, str | None] | None:
    """``Session-Expires`` (or ``x``): the interval and the refresher, None if absent/bad."""
    value = message.headers.get("Session-Expires") or message.headers.get("x")
    if value is None:
        return None
    number, _, params = value.partition(";")
    if not number.strip().isdigit() or len(number.strip()) > 9:
        return None
    try:
        refresher = parse_params(params).get("refresher", "").lower() or None
    except ValueError:
        return None  # unreadable: as if absent
    return int(number), refresher if refresher in ("uac", "uas") else None


def negotiate(request: Request, min_se: int, default: int | None) -> Negotiated | TooSmall | None:
    """What the 2xx to ``request`` says about the session timer (None: no timer)."""
    supported = supports_timer(request)
    asked = session_expires(request)
    if asked is None:
        if not supported or default is None:
            return None
        return Negotiated(max(default, min_se), "uac", True)
    interval, refresher = asked
    if interval < min_se:
        if supported:
            return TooSmall(min_se)
        interval = min_se
    if refresher is None:
        refresher = "uac" if supported else "uas"
    return Negotiated(interval, refresher, supported)


@dataclass(slots=True)
class SessionTimer:
    interval: float
    we_refresh: bool
    deadline: float | None = None  # to refresh (we_refresh) or to give up
    refresh: Key | None = None  # our refresh's client transaction, while it runs
    use_update: bool = True  # the peer allows UPDATE (else re-INVITE)

    def restart(self, now: float) -> None:
        self.refresh = None
        if self.we_refresh:
            self.deadline = now + self.interval / 2
        else:
            self.deadline = now + self.interval - min(32.0, self.interval / 3)
