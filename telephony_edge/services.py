"""What every handler of a worker shares, reachable as ``app[SERVICES]``.

Its own module so that route modules (API, Twilio, …) and the application
factory can both import it without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web

from telephony_edge.calls.manager import CallManager
from telephony_edge.calls.service import CallService
from telephony_edge.config import Settings
from telephony_edge.coord.base import Coordinator
from telephony_edge.routing import NumberRouter

if TYPE_CHECKING:
    from telephony_edge.provider import Provider


@dataclass(slots=True)
class Services:
    """What every handler of this worker shares."""

    settings: Settings
    router: NumberRouter
    calls: CallManager
    coordinator: Coordinator
    call_service: CallService
    worker_id: str
    http: aiohttp.ClientSession | None = None
    #: the enabled providers, by name (mounted from the registry)
    providers: dict[str, Provider] = field(default_factory=dict)

    @property
    def client(self) -> aiohttp.ClientSession:
        assert self.http is not None, "the HTTP client exists while the app runs"
        return self.http


SERVICES = web.AppKey("services", Services)
