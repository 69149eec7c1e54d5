"""The seam every network plugs into: one :class:`Provider` per network package.

A provider declares everything about its network that the rest of the edge
needs, and nothing outside its package names the network:

* ``name`` and ``settings_model``: its section of the configuration
  (``twilio:`` → :class:`~telephony_edge.twilio.settings.TwilioSettings`);
* :meth:`Provider.mount`: its aiohttp routes (webhooks, media WebSockets)
  and start-up/clean-up hooks. The routes admit the network's media and
  build its :class:`~telephony_edge.calls.leg.Leg`, then hand both to
  :meth:`~telephony_edge.calls.service.CallService.run`;
* :meth:`Provider.dial`: outbound calls (``POST /start_outbound_call``), to phone
  numbers, and to ``sip:`` URIs where ``dials_sip_uris`` says so;
* :meth:`Provider.hangup` / :meth:`Provider.transfer`: call control through
  the network's API for calls with no leg on this worker (ringing, or media
  on another worker);
* ``final_statuses``: which of its own call statuses end a call that never
  reached the edge's media, and with which platform ``call_status``;
* :meth:`Provider.banner`: lines for the ``serve`` banner (URLs to paste);
* :meth:`Provider.status_tables`: its part of ``/status`` (e.g. SIP registrations);
* ``pending_websocket_paths``: its media WebSockets, which count against the
  worker's cap on not-yet-authenticated WebSockets until admitted
  (``telephony_edge.http_limits``);
* ``call_paths``: the requests that announce a call (its carrier webhook, an
  offer), each the root span of its call's trace (``telephony_edge.tracing``);
* ``resumable``: the network brings a live call back to the edge, to any
  worker, when the worker carrying it is lost or lets it go, and the
  provider's routes resume it there: the network's word of the break goes to
  :func:`~telephony_edge.calls.migration.announce_break`, the media that comes
  back to :meth:`~telephony_edge.calls.service.CallService.take_over` and
  ``run(record, leg, resumed)``; its legs hand a call off on a drain
  (``Leg.hand_off``) and name the call in its live state (``Leg.network_state``);
* :meth:`Provider.resume`: for a resumable network that does not come back to
  the edge by itself (SIP: the edge re-INVITEs the caller through the proxy in
  front), the takeover on this worker when it is asked to (a ``resume`` control
  message from the worker that let the call go, or whoever saw its worker lost).

What a provider cannot do raises :class:`~telephony_edge.calls.leg.NotSupported`.
The application mounts every enabled provider from the registry
(``telephony_edge.registry``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from aiohttp import web

from telephony_edge.calls.leg import NotSupported
from telephony_edge.calls.record import CallRecord, CallStatus
from telephony_edge.config import ProviderSettings

if TYPE_CHECKING:
    from telephony_edge.services import Services


class Provider:
    """One network (Twilio, Vonage, SIP, WebRTC, …) as the edge sees it."""

    name: ClassVar[str]
    settings_model: ClassVar[type[ProviderSettings]] = ProviderSettings
    #: provider status → (call_status, error_message) for calls that end before media
    final_statuses: ClassVar[Mapping[str, tuple[CallStatus, str | None]]] = {}
    pending_websocket_paths: ClassVar[tuple[str, ...]] = ()
    call_paths: ClassVar[tuple[str, ...]] = ()
    #: whether the network reaches the edge at ``public_url`` (webhooks), so the
    #: banner warns when that is a loopback address
    uses_public_url: ClassVar[bool] = True
    #: whether the network detects answering machines on the calls it dials (the
    #: edge's own detector runs where it does not: ``telephony_edge.amd``)
    network_amd: ClassVar[bool] = False
    #: whether :meth:`dial` takes a ``sip:`` URI as the destination (else a number only)
    dials_sip_uris: ClassVar[bool] = False
    #: whether a live call survives its worker on this network (see the module docstring)
    resumable: ClassVar[bool] = False

    def __init__(self, services: Services) -> None:
        self.services = services

    def mount(self, app: web.Application) -> None:
        """Add the network's routes and hooks to the worker's application."""
        raise NotImplementedError

    def final_status(self, provider_status: str) -> tuple[CallStatus, str | None] | None:
        """How a call the network reports as ``provider_status`` ends, if that is final."""
        return self.final_statuses.get(provider_status)

    async def dial(self, record: CallRecord) -> str:
        """Place the outbound call ``record`` describes; return the network's call id."""
        raise NotSupported(f"{self.name} cannot place outbound calls")

    async def hangup(self, record: CallRecord) -> None:
        """End a call that has no leg on this worker, through the network's API."""
        raise NotSupported(f"{self.name} cannot hang up calls without their media")

    async def transfer(self, record: CallRecord, destination: str) -> None:
        """Transfer a call that has no leg on this worker, through the network's API."""
        raise NotSupported(f"{self.name} cannot transfer calls without their media")

    async def resume(self, call_id: str, generation: int | None) -> bool:
        """Take the live call ``call_id`` over here and bring its network to this worker
        (``generation``: only a break of that generation); whether it runs here now. The
        networks that come back by themselves (Twilio's ``<Redirect>``) need not."""
        return False

    async def status_tables(self) -> dict[str, list[dict[str, Any]]]:
        """Tables for ``/status`` (name → rows of the same keys); none by default."""
        return {}

    @classmethod
    def banner(cls, public_url: str) -> list[str]:
        """Lines the ``serve`` banner prints for this network (e.g. webhook URLs to paste)."""
        return []
