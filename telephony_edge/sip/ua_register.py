"""Registrations in the UA: each account's :class:`~telephony_edge.sip.register.Registration`.

:meth:`Registrations.register` starts one for an account this worker holds
(the shell decides which: :mod:`telephony_edge.sip.registrations`), and
:meth:`Registrations.unregister` stops it, with or without removing the
binding. A response with a registration's Call-ID goes to it; its timers are
the UA's deadlines; its lookups of the registrar are :class:`Resolve` actions
(owner ``register:<account>``) and its state changes :class:`RegistrationChanged`.
A registration is forgotten once stopped.
"""

from __future__ import annotations

from typing import Any

from telephony_edge.sip.client_outputs import Lookup, SendRequest
from telephony_edge.sip.digest_client import DigestClient
from telephony_edge.sip.message import Response
from telephony_edge.sip.register import (
    Account,
    RegisterConfig,
    RegisterOutput,
    Registration,
    State,
    Status,
)
from telephony_edge.sip.ua_core import UaCore
from telephony_edge.sip.ua_records import Action, RegistrationChanged, Resolve, Send

OWNER_PREFIX = "register:"


class Registrations(UaCore):
    """:meth:`register`, :meth:`unregister` and what answers them."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._registrations: dict[str, Registration] = {}  # account name → its machine
        self._registration_ids: dict[str, str] = {}  # SIP Call-ID → account name

    def registrations(self) -> dict[str, Registration]:
        return dict(self._registrations)

    def register(
        self, account: Account, now: float, digest: DigestClient | None = None
    ) -> list[Action]:
        """Keep ``account`` registered from now on (nothing if it already is)."""
        if account.name in self._registrations:
            return []
        sent_by = self.config.sent_by_for("UDP")
        config = RegisterConfig(sent_by, self.config.user_agent, self.config.timers)
        machine = Registration(account, config, digest, self._new_id)
        self._registrations[account.name] = machine
        self._registration_ids[machine.call_id] = account.name
        return self._registration_outputs(machine, machine.start(now))

    def unregister(self, name: str, now: float, remove: bool = True) -> list[Action]:
        """Stop registering ``name``; ``remove``: take the binding off the registrar first."""
        machine = self._registrations.get(name)
        if machine is None:
            return []
        return self._registration_outputs(machine, machine.stop(now, remove))

    def _registration_response(self, response: Response, now: float) -> list[Action] | None:
        name = self._registration_ids.get(response.call_id())
        machine = self._registrations.get(name) if name is not None else None
        if machine is None:
            return None
        return self._registration_outputs(machine, machine.receive(response, now))

    def _registration_resolved(
        self, owner: str, addresses: list[tuple[str, int]], reason: str, now: float
    ) -> list[Action] | None:
        if not owner.startswith(OWNER_PREFIX):
            return None
        machine = self._registrations.get(owner.removeprefix(OWNER_PREFIX))
        if machine is None:
            return []
        outputs = (
            machine.resolved(addresses, now) if addresses else machine.unresolvable(reason, now)
        )
        return self._registration_outputs(machine, outputs)

    def _registration_deadline(self) -> float | None:
        times = (machine.next_deadline() for machine in self._registrations.values())
        return min((t for t in times if t is not None), default=None)

    def _registration_tick(self, now: float) -> list[Action]:
        actions: list[Action] = []
        for machine in list(self._registrations.values()):
            due = machine.next_deadline()
            if due is not None and due <= now:
                actions += self._registration_outputs(machine, machine.tick(now))
        return actions

    def _registration_outputs(
        self, machine: Registration, outputs: list[RegisterOutput]
    ) -> list[Action]:
        name = machine.account.name
        actions: list[Action] = []
        for out in outputs:
            if isinstance(out, SendRequest):
                actions.append(Send(out.data, out.dest, out.transport))
            elif isinstance(out, Lookup):
                actions.append(Resolve(OWNER_PREFIX + name, out.uri, out.transport))
            elif isinstance(out, Status):
                actions.append(RegistrationChanged(name, out))
        if machine.state is State.STOPPED:
            self._registrations.pop(name, None)
            self._registration_ids.pop(machine.call_id, None)
        return actions
