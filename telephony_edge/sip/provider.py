"""SIP as a provider: ``POST /register_sip_call`` and the worker's SIP/RTP endpoint.

A caller's system (a PBX, a trunk, a softphone) first registers the call
with the API and gets a ``sip_uri`` naming a fresh call id; the INVITE to
that URI claims the registration exactly once (see
:mod:`telephony_edge.sip.transport`). The call is created at registration,
like a Twilio call at its voice webhook, so the setup reaper ends it
``error`` if no INVITE ever comes.

Outbound calls (``POST /start_outbound_call`` from a SIP number, to a number
through a trunk or to a ``sip:`` URI) are :mod:`telephony_edge.sip.dialer`'s;
a call that is not answered ends as its SIP answer says (``final_statuses``,
in the words of Twilio's status callbacks). The accounts the edge registers
are :mod:`telephony_edge.sip.accounts`', shown on ``/status``.
"""

from __future__ import annotations

import errno
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from telephony_edge.api import ApiError, _authorize, _json_errors, _json_object, _object, _string
from telephony_edge.calls.record import CallRecord, CallStatus
from telephony_edge.calls.refusals import CallRejected
from telephony_edge.config import Settings
from telephony_edge.errors import UserError, os_reason
from telephony_edge.provider import Provider
from telephony_edge.services import SERVICES
from telephony_edge.sip.answerer import pending_key
from telephony_edge.sip.family import bound_socket
from telephony_edge.sip.settings import SipSettings, sip_settings
from telephony_edge.sip.transport import SipEndpoint
from telephony_edge.sip.uri import format_hostport

REGISTER_PATH = "/register_sip_call"
SIP_ENDPOINT = web.AppKey("sip_endpoint", SipEndpoint)


class SipProvider(Provider):
    """Calls that arrive as SIP INVITEs (to a registered call id, a number from a trunk, an
    account the edge registers) and calls it places, with RTP media."""

    name = "sip"
    call_paths = (REGISTER_PATH,)
    settings_model = SipSettings
    uses_public_url = False  # trunks reach the SIP port, not the web URL
    final_statuses = {
        "cancelled": (CallStatus.USER_ENDED, "the caller cancelled before the answer"),
        # outbound calls (sip/uac.py says which SIP answer is which)
        "busy": (CallStatus.ERROR, "the called party was busy"),
        "no-answer": (CallStatus.ERROR, "the called party did not answer"),
        "failed": (CallStatus.ERROR, "the network could not place the call"),
        "canceled": (CallStatus.API_ENDED, None),
    }
    dials_sip_uris = True
    resumable = True  # with sip.dialog_proxy: the edge re-INVITEs (sip/resumer.py)
    _endpoint_of: SipEndpoint | None = None

    def mount(self, app: web.Application) -> None:
        settings = sip_settings(self.services.settings)
        app[SIP_ENDPOINT] = self._endpoint_of = SipEndpoint(self.services, settings)
        app.cleanup_ctx.append(self._endpoint)
        app.router.add_post(REGISTER_PATH, _json_errors(register_sip_call))

    @classmethod
    def config_warnings(cls, settings: Settings) -> list[str]:
        """SIP numbers that no trunk may call: every INVITE to them would be refused.

        A number (``numbers:`` with ``provider: sip``) is reached only by a
        trunk of ``sip.trunks`` whose ``numbers`` is empty or lists it
        (``telephony_edge.sip.trunks``); registered call ids need no trunk.
        """
        sip = sip_settings(settings)
        trunks = [trunk for trunk in sip.trunks.values() if trunk.cidrs]
        accounts = {account.number for account in sip.accounts.values()}
        why = "sip.trunks is empty" if not trunks else "no entry of sip.trunks lists it"
        return [
            f"numbers.{number}: no trunk may call this SIP number ({why}), so INVITEs to it "
            "are refused; add a trunk with its cidrs, and numbers empty or listing it"
            for number, route in settings.numbers.items()
            if route.provider == cls.name
            and number not in accounts
            and not any(not trunk.numbers or number in trunk.numbers for trunk in trunks)
        ]

    @property
    def endpoint(self) -> SipEndpoint:
        assert self._endpoint_of is not None, "mounted"
        return self._endpoint_of

    async def dial(self, record: CallRecord) -> str:
        """INVITE through the trunk of ``record.from_`` (or to its ``sip:`` URI): the SIP
        Call-ID; the call rings on in a task of its own (sip/dialer.py)."""
        return await self.endpoint.dialer.dial(record)

    async def hangup(self, record: CallRecord) -> None:
        """A call still ringing: CANCEL if it rings here; a call ringing on another worker
        is CANCELled there when its record ends (the call service ends it now)."""
        self.endpoint.dialer.cancel(record.call_id)

    async def resume(self, call_id: str, generation: int | None) -> bool:
        """Take a live SIP call over here: a re-INVITE with this worker's media through the
        proxy in front (sip/resumer.py); False without ``sip.dialog_proxy``."""
        return await self.endpoint.resumer.resume(call_id, generation)

    async def status_tables(self) -> dict[str, list[dict[str, Any]]]:
        accounts = await self.endpoint.accounts.status()
        return {"sip_accounts": accounts} if accounts else {}

    @staticmethod
    async def _endpoint(app: web.Application) -> AsyncIterator[None]:
        endpoint = app[SIP_ENDPOINT]
        settings = endpoint.settings
        try:
            await endpoint.start()
            probe_rtp_range(settings)
        except OSError as exc:
            await endpoint.stop()
            raise SipListenError(settings, exc) from None
        except UserError:
            await endpoint.stop()
            raise
        yield
        await endpoint.stop()


class SipListenError(UserError):
    """``serve`` could not take its SIP port: one line, like a busy HTTP port (ListenError)."""

    _HINTS = {
        errno.EADDRINUSE: "another process uses it; stop that one or change sip.port",
        errno.EACCES: "ports below 1024 need privileges; change sip.port",
        errno.EADDRNOTAVAIL: "this machine has no such address; check sip.bind_host(6)",
    }

    def __init__(self, settings: SipSettings, exc: OSError) -> None:
        cause = _os_error(exc)
        hint = self._HINTS.get(cause.errno or 0)
        over = "UDP and TCP" if settings.tcp else "UDP"
        hosts = settings.bind_hosts.values()
        where = " and ".join(format_hostport(host, settings.port) for host in hosts)
        message = f"cannot listen for SIP ({over}) on {where}: {os_reason(cause)}"
        super().__init__(f"{message} ({hint})" if hint else message)


def _os_error(exc: OSError) -> OSError:
    """The OSError that has the errno: uvloop raises its own, caused by the system's."""
    while not exc.errno and isinstance(exc.__cause__, OSError):
        exc = exc.__cause__
    return exc


def probe_rtp_range(settings: SipSettings) -> None:
    """Raise a one-line :class:`UserError` if no port of the RTP range can be bound now, on
    the address of each of the worker's families.

    Calls bind their RTP port when they are answered; a range another process
    holds entirely would fail every call, so it fails the start instead.
    """
    for host in settings.bind_hosts.values():
        _probe_rtp_range(host, settings.rtp_port_min, settings.rtp_port_max)


def _probe_rtp_range(host: str, low: int, high: int) -> None:
    last: OSError | None = None
    for port in range(low + low % 2, high + 1, 2):  # RTP on even ports (transport.RtpPorts)
        try:
            bound_socket(host, port).close()
        except OSError as exc:
            last = exc
            continue
        return
    message = f"cannot bind any RTP port of {format_hostport(host, None)}:{low}-{high}"
    if last is None:
        raise UserError(f"{message}: the range has no even port (widen it)")
    hint = ""
    if last.errno == errno.EADDRINUSE:
        hint = " (other processes use them; change sip.rtp_port_min and sip.rtp_port_max)"
    raise UserError(f"{message}: {os_reason(last)}{hint}")


async def register_sip_call(request: web.Request) -> web.Response:
    """``POST /register_sip_call`` → ``{"call_id", "sip_uri"}``."""
    _authorize(request)
    body = await _json_object(request)
    services = request.app[SERVICES]
    settings = sip_settings(services.settings)
    agent_config = _object(body, "agent_config")
    agent_id = _string(body, "agent_id", required=agent_config is None)
    if agent_id is None:
        agent_id = settings.default_agent_id
        if agent_id is None:
            raise ApiError(
                400, "agent_id is required (agent_config alone needs sip.default_agent_id)"
            )
    metadata = _object(body, "metadata")
    include = body.get("include_metadata_in_prompt", False)
    if not isinstance(include, bool):
        raise ApiError(400, "include_metadata_in_prompt must be true or false")
    try:
        record = await services.call_service.create(
            agent_id=agent_id,
            provider="sip",
            direction="inbound",
            agent_config=agent_config,
            metadata=metadata,
            include_metadata_in_prompt=include,
            region=services.settings.server.region or "",
        )
    except CallRejected as exc:
        raise ApiError(exc.http_status, exc.reason) from None
    ttl = settings.registration_ttl_s
    await services.coordinator.register_pending(
        pending_key(record.call_id), {"call_id": record.call_id}, ttl
    )
    hostport = format_hostport(*request.app[SIP_ENDPOINT].advertised)
    return web.json_response(
        {"call_id": record.call_id, "sip_uri": f"sip:{record.call_id}@{hostport}"}
    )
