"""Which worker registers which account (``sip.accounts``), and what operators see of it.

Theory of operation
-------------------
Every worker runs :meth:`Accounts.run`. Every ``calls.lease_renew_s`` it takes
or renews, for each account, the coordinator's lease ``sip-account:<name>`` (the
lease calls' media owners use, :meth:`~telephony_edge.coord.base.Coordinator.claim_owner`:
held by one worker at a time, lapsing ``calls.lease_s`` after its holder stops
renewing it; no call record goes with it, so no reaper takes it for a call).
The worker holding an account's lease keeps it registered
(:meth:`~telephony_edge.sip.ua.UserAgent.register`); one that loses the lease,
or starts draining, stops without removing the binding and lets the lease go:
the next holder refreshes the binding, or replaces it when its own address
differs (:mod:`telephony_edge.sip.register` removes the old one). On
shutdown, a worker removes its bindings (``Expires: 0``) only when no other
worker is ready to take them over, then releases its leases.

The registered Contact is ``sip:<user>@<host>:<port>``: the edge's
advertised SIP address or the account's ``contact_host``, and a user that
names the account (``acct-`` and an HMAC of its name under the API's private
key), so that every worker of the cluster knows it
(:class:`~telephony_edge.sip.trunks.Admission`) and nobody outside can guess
it. A call to it is routed as a call to the account's ``number``.

Each registration's state changes are logged and counted
(``telephony_edge_sip_registrations_total``), its binding is exported as
``telephony_edge_sip_registration_up{account}`` (1 while this worker holds one;
the maximum over workers says whether calls can reach the edge), and
:meth:`Accounts.status` is its part of ``/status``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
from typing import TYPE_CHECKING, Any

from telephony_edge import metrics
from telephony_edge.sip.digest_client import DigestClient
from telephony_edge.sip.register import Account, State
from telephony_edge.sip.settings_outbound import SipAccountSettings
from telephony_edge.sip.ua_records import RegistrationChanged
from telephony_edge.sip.uri import SipUri

if TYPE_CHECKING:
    from telephony_edge.sip.transport import SipEndpoint

log = logging.getLogger(__name__)

LEASE_PREFIX = "sip-account:"
#: how long a shutdown waits for the registrar to confirm the bindings' removal
UNREGISTER_WAIT_S = 2.0
CONTACT_USER_PREFIX = "acct-"


class Accounts:
    """See the module docstring."""

    def __init__(self, endpoint: SipEndpoint) -> None:
        self.endpoint = endpoint  # its UA and sockets carry the REGISTERs
        self.settings = endpoint.settings.accounts
        key = (endpoint.services.settings.api.private_key or "").encode()
        self._users = {
            name: CONTACT_USER_PREFIX
            + hmac.new(key, name.encode(), hashlib.sha256).hexdigest()[:24]
            for name in self.settings
        }
        self._numbers = {user: self.settings[name].number for name, user in self._users.items()}
        self._held: set[str] = set()
        self._state: dict[str, RegistrationChanged] = {}
        self._stopped = asyncio.Event()  # set when this worker has no registration left
        for name in self.settings:
            metrics.SIP_REGISTRATION_UP.labels(account=name).set(0)

    def number_of(self, user: str) -> str | None:
        """The number calls to a Contact user of ours go to (admission)."""
        return self._numbers.get(user)

    # -- the leases ----------------------------------------------------------------------

    async def run(self) -> None:
        """Take, renew and give up the accounts' leases until cancelled."""
        if not self.settings:
            return
        calls = self.endpoint.services.settings.calls
        while True:
            try:
                await self._renew(calls.lease_s)
            except Exception:  # a bug: logged, and the leases are tried again next time
                log.exception("SIP account leases not renewed")
            await asyncio.sleep(calls.lease_renew_s)

    async def _renew(self, lease_s: float) -> None:
        services = self.endpoint.services
        coordinator, me = services.coordinator, services.worker_id
        for name in self.settings:
            key = LEASE_PREFIX + name
            if not services.calls.accepting:  # draining: another worker takes over now
                if name in self._held:
                    self._give_up(name, remove=False)
                    with contextlib.suppress(Exception):
                        await coordinator.release_owner(key, me)
                continue
            try:
                held = await coordinator.claim_owner(key, me, ttl=lease_s)
            except Exception as exc:  # the coordinator away: keep what we have, ask again
                log.warning("SIP account lease not renewed: %s", exc, extra={"sip_account": name})
                continue
            if held and name not in self._held:
                self._take(name)
            elif not held and name in self._held:
                self._give_up(name, remove=False)

    def _take(self, name: str) -> None:
        ua = self.endpoint.ua
        if ua is None:
            return
        self._held.add(name)
        log.info("SIP account: this worker registers it", extra={"sip_account": name})
        settings = self.settings[name]
        digest = DigestClient(settings.username, settings.password, settings.realm)
        self.endpoint._apply(
            ua.register(self._account(name, settings), self.endpoint._now(), digest)
        )

    def _give_up(self, name: str, remove: bool) -> None:
        self._held.discard(name)
        ua = self.endpoint.ua
        if ua is not None:
            self.endpoint._apply(ua.unregister(name, self.endpoint._now(), remove))

    def _account(self, name: str, settings: SipAccountSettings) -> Account:
        if settings.contact_host is not None:
            contact_host = settings.contact_host
        else:
            host, port = self.endpoint.advertised
            contact_host = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        registrar = SipUri.parse(settings.registrar)
        transport = registrar.params.get("transport", settings.transport).upper()
        contact = f"sip:{self._users[name]}@{contact_host};transport={transport.lower()}"
        return Account(
            name=name,
            registrar=settings.registrar,
            aor=settings.address_of_record,
            contact=contact,
            expires=settings.expires_s,
            transport=transport,
            retry_min=settings.retry_min_s,
            retry_max=settings.retry_max_s,
        )

    async def stop(self) -> None:
        """Shutting down: remove the bindings unless another worker takes them over, wait a
        little for the registrar's answers, and let the leases go."""
        if not self._held:
            return
        services = self.endpoint.services
        other = await services.call_service.other_ready_worker()
        held = sorted(self._held)
        for name in held:
            self._give_up(name, remove=other is None)
        ua = self.endpoint.ua
        if ua is not None and ua.registrations():  # removals under way
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopped.wait(), UNREGISTER_WAIT_S)
        for name in held:
            with contextlib.suppress(Exception):
                await services.coordinator.release_owner(LEASE_PREFIX + name, services.worker_id)

    # -- what the UA says ------------------------------------------------------------------

    def changed(self, change: RegistrationChanged) -> None:
        """A registration's state changed: logged, counted, exported."""
        previous = self._state.get(change.account)
        self._state[change.account] = change
        status = change.status
        up = status.expires_at is not None
        metrics.SIP_REGISTRATION_UP.labels(account=change.account).set(1 if up else 0)
        if status.state is State.REGISTERED:
            outcome = "registered"
        elif status.state is State.STOPPED:
            outcome = "stopped"
        elif (
            previous is not None
            and previous.status.state is status.state
            and previous.status.expires_at is not None
            and not up
        ):
            outcome = "expired"  # the binding ran out while its refresh kept failing
        else:
            outcome = "failed"
        metrics.SIP_REGISTRATIONS.labels(outcome=outcome).inc()
        ua = self.endpoint.ua
        if outcome == "stopped" and ua is not None and not ua.registrations():
            self._stopped.set()
        level = logging.WARNING if outcome in ("failed", "expired") else logging.INFO
        log.log(
            level,
            "SIP account %s: %s",
            outcome,
            status.reason,
            extra={"sip_account": change.account, "state": str(status.state)},
        )

    # -- /status ---------------------------------------------------------------------------

    async def status(self) -> list[dict[str, Any]]:
        """Each account: where it registers, which worker holds it, and (on this worker)
        its state, how long its binding holds and why it last changed."""
        services = self.endpoint.services
        holders: dict[str, str | None] = {}
        with contextlib.suppress(Exception):  # the coordinator away: holders unknown
            keys = [LEASE_PREFIX + name for name in self.settings]
            found = await services.coordinator.owners_of(keys)
            holders = {key.removeprefix(LEASE_PREFIX): worker for key, worker in found.items()}
        now = self.endpoint._now()
        rows = []
        for name, settings in self.settings.items():
            change = self._state.get(name) if name in self._held else None
            status = change.status if change is not None else None
            rows.append(
                {
                    "account": name,
                    "aor": settings.address_of_record,
                    "number": settings.number,
                    "holder": holders.get(name),
                    "state": str(status.state) if status else None,
                    "expires_in_s": _left(status.expires_at if status else None, now),
                    "retry_in_s": _left(status.retry_at if status else None, now),
                    "reason": status.reason if status else None,
                }
            )
        return rows


def _left(at: float | None, now: float) -> int | None:
    return None if at is None else max(0, round(at - now))
