"""Registration of one account with a registrar (RFC 3261 §10.2), the client side, sans-I/O.

Theory of operation
-------------------
A PBX or a carrier reaches the edge at the address the edge registers for
an account (its AOR, ``sip:1001@pbx.example``): :class:`Registration` keeps
that binding alive. Its shell (the UA, :mod:`telephony_edge.sip.ua_register`)
feeds it the current time with every event: :meth:`~Registration.start`,
the answer to its :class:`Lookup` of the registrar (:meth:`~Registration.resolved`,
:meth:`~Registration.unresolvable`), :meth:`~Registration.receive` (a response
with the registration's Call-ID), :meth:`~Registration.tick` and
:meth:`~Registration.stop`. It returns :class:`~telephony_edge.sip.client_outputs.Lookup`,
:class:`~telephony_edge.sip.client_outputs.SendRequest` and
:class:`Status` (the state changed: for the log, ``/status`` and the metrics).

* A REGISTER carries the account's Contact (the edge's advertised address, or
  the configured proxy's, with a user part only the edge's configuration
  knows) and the asked ``Expires``; one Call-ID for the registration's life
  and a CSeq one higher each time (§10.2.4).
* 401/407: again with the digest (:mod:`telephony_edge.sip.digest_client`);
  the challenge is kept, so a refresh answers it ahead (``nc`` + 1) and costs
  one round trip, not two. 423: again with the registrar's ``Min-Expires``.
* A 2xx grants an expiry (our Contact's ``expires``, else ``Expires``, else
  what was asked); the binding is refreshed ``REFRESH_MARGIN_S`` before it
  runs out, or at half its life if that is sooner. Other bindings of the same
  Contact user at another address (a worker that held the registration before,
  with another advertised address) are removed with ``expires=0`` at once.
* Anything else (a final error, no response: Timer F, a registrar that does not
  resolve, credentials refused) is a failure: a new try after a back-off that
  doubles from ``retry_min`` to ``retry_max``, with jitter (so that many edges
  do not come back at once after a registrar restarts). The binding counts as
  registered until the expiry it was granted, whatever fails meanwhile.
* :meth:`~Registration.stop` with ``unregister`` removes the binding
  (``Expires: 0``) when there is one; either way the machine ends ``stopped``.

Transitions are :data:`TABLE`, ``(state, event) → (state, ops)``; a pair
not in it is ignored (a late response after a stop). The ops are data that
:meth:`Registration._run` gives a meaning; code is only for what a table
cannot say (the granted expiry, the back-off).
"""

from __future__ import annotations

import enum
import random
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from telephony_edge.sip.client_outputs import Lookup, SendRequest
from telephony_edge.sip.dialog import Address
from telephony_edge.sip.digest_client import MAX_CHALLENGES, DigestClient
from telephony_edge.sip.header_values import NameAddr
from telephony_edge.sip.headers import Headers, is_digits
from telephony_edge.sip.message import MAGIC_COOKIE, Request, Response
from telephony_edge.sip.transaction import (
    DEFAULT_TIMERS,
    NonInviteClientTransaction,
    Output,
    PassUp,
    TimedOut,
    Timers,
    Transmit,
)
from telephony_edge.sip.uri import SipUri

REFRESH_MARGIN_S = 60.0  # past Timer F (32 s): a failed refresh is retried before the end
MAX_EXPIRES = 86_400


@dataclass(frozen=True, slots=True)
class Account:
    """What one registration needs (the configuration's ``sip.registrations.<name>``)."""

    name: str
    registrar: str  # sip:pbx.example:5060 (the Request-URI, and where it goes)
    aor: str  # sip:1001@pbx.example
    contact: str  # sip:<user>@<edge or proxy>:<port>;transport=udp
    expires: int = 3600
    transport: str = "UDP"
    retry_min: float = 5.0
    retry_max: float = 300.0


@dataclass(frozen=True, slots=True)
class RegisterConfig:
    sent_by: str
    user_agent: str = "telephony-edge"
    timers: Timers = DEFAULT_TIMERS


class State(enum.StrEnum):
    IDLE = "idle"
    RESOLVING = "resolving"
    REGISTERING = "registering"
    REGISTERED = "registered"
    BACKOFF = "backoff"  # failed; the next try at ``retry_at``
    UNREGISTERING = "unregistering"
    STOPPED = "stopped"


class Ev(enum.Enum):
    START = "start"
    RESOLVED = "resolved"
    UNRESOLVABLE = "unresolvable"
    OK = "ok"  # 2xx
    CHALLENGE = "challenge"  # 401 / 407
    TOO_BRIEF = "too_brief"  # 423 with Min-Expires
    FAILURE = "failure"  # any other final, Timer F
    REFRESH = "refresh"  # the refresh time came
    RETRY = "retry"  # the back-off ended
    STOP = "stop"
    UNREGISTER = "unregister"  # stop, removing the binding


class Op(enum.Enum):
    LOOKUP = "lookup"
    REGISTER = "register"  # a REGISTER of our Contact with the asked expiry
    AUTHENTICATE = "authenticate"  # again with the digest, or fail
    LENGTHEN = "lengthen"  # again with Min-Expires, or fail
    GRANTED = "granted"  # the expiry, the refresh time, stale bindings to remove
    BACK_OFF = "back_off"
    REMOVE = "remove"  # REGISTER with Expires: 0 (or the end, with no binding to remove)
    ABANDON = "abandon"  # the open REGISTER is not waited for any more
    END = "end"  # no binding of ours any more; no timer
    REPORT = "report"  # a Status for the shell


S, E = State, Ev
_ACTIVE = (S.RESOLVING, S.REGISTERING, S.BACKOFF)
_UNREGISTERED = (E.OK, E.FAILURE, E.TOO_BRIEF, E.STOP)

#: (state, event) → (next state, ops); see the module docstring
TABLE: dict[tuple[State, Ev], tuple[State, tuple[Op, ...]]] = {
    (S.IDLE, E.START): (S.RESOLVING, (Op.LOOKUP,)),
    (S.RESOLVING, E.RESOLVED): (S.REGISTERING, (Op.REGISTER,)),
    (S.RESOLVING, E.UNRESOLVABLE): (S.BACKOFF, (Op.BACK_OFF, Op.REPORT)),
    (S.REGISTERING, E.OK): (S.REGISTERED, (Op.GRANTED, Op.REPORT)),
    (S.REGISTERING, E.CHALLENGE): (S.REGISTERING, (Op.AUTHENTICATE,)),
    (S.REGISTERING, E.TOO_BRIEF): (S.REGISTERING, (Op.LENGTHEN,)),
    (S.REGISTERING, E.FAILURE): (S.BACKOFF, (Op.BACK_OFF, Op.REPORT)),
    (S.REGISTERED, E.REFRESH): (S.REGISTERING, (Op.REGISTER,)),
    (S.BACKOFF, E.RETRY): (S.RESOLVING, (Op.LOOKUP,)),
    (S.UNREGISTERING, E.CHALLENGE): (S.UNREGISTERING, (Op.AUTHENTICATE,)),
    **{(S.UNREGISTERING, ev): (S.STOPPED, (Op.ABANDON, Op.END, Op.REPORT)) for ev in _UNREGISTERED},
    (S.IDLE, E.STOP): (S.STOPPED, (Op.END,)),
    (S.IDLE, E.UNREGISTER): (S.STOPPED, (Op.END,)),
    (S.REGISTERED, E.STOP): (S.STOPPED, (Op.END, Op.REPORT)),
    (S.REGISTERED, E.UNREGISTER): (S.UNREGISTERING, (Op.REMOVE,)),
    # a binding may hold while a refresh is under way or backs off: removed too
    **{(s, E.UNREGISTER): (S.UNREGISTERING, (Op.ABANDON, Op.REMOVE)) for s in _ACTIVE},
    **{(s, E.STOP): (S.STOPPED, (Op.ABANDON, Op.END, Op.REPORT)) for s in _ACTIVE},
}


# -- outputs ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Status:
    """The registration's state changed (``reason`` says why, for the log)."""

    state: State
    reason: str
    expires_at: float | None  # the binding holds until then (None: no binding)
    retry_at: float | None  # the next try after a failure


RegisterOutput = Lookup | SendRequest | Status


class Registration:
    """See the module docstring."""

    def __init__(
        self,
        account: Account,
        config: RegisterConfig,
        digest: DigestClient | None = None,
        new_id: Callable[[], str] | None = None,
        jitter: Callable[[], float] | None = None,
    ) -> None:
        self.account = account
        self.config = config
        self.digest = digest
        self._new_id = new_id or (lambda: secrets.token_hex(8))
        self._jitter = jitter or random.random  # [0, 1): spreads the retries
        self.call_id = self._new_id()
        self.tag = self._new_id()
        self.state = State.IDLE
        self.expires_at: float | None = None
        self.retry_at: float | None = None
        self.refresh_at: float | None = None
        self.reason = ""
        self._expires = min(account.expires, MAX_EXPIRES)
        self._cseq = 0
        self._dest: Address | None = None
        self._key: tuple[str, str] | None = None  # the open REGISTER's (branch, method)
        self._tx: NonInviteClientTransaction | None = None
        self._failures = 0
        self._challenges = 0
        self._stale: list[str] = []  # other bindings of our Contact user, to remove
        self._removed: set[tuple[str, str | None, str, int]] = set()

    def holds(self, now: float) -> bool:
        """Whether the registrar holds a binding of ours at ``now``, as far as we know."""
        return self.expires_at is not None and now < self.expires_at

    def next_deadline(self) -> float | None:
        times = [self.refresh_at, self.retry_at]
        if self._tx is not None:
            times.append(self._tx.next_deadline())
        return min((t for t in times if t is not None), default=None)

    # -- events -----------------------------------------------------------------------

    def start(self, now: float) -> list[RegisterOutput]:
        return self._event(Ev.START, now)

    def stop(self, now: float, unregister: bool = True) -> list[RegisterOutput]:
        """Stop; with ``unregister`` remove the binding (Expires: 0) first."""
        return self._event(Ev.UNREGISTER if unregister else Ev.STOP, now)

    def resolved(self, addresses: list[Address], now: float) -> list[RegisterOutput]:
        if self.state is not State.RESOLVING:
            return []
        if not addresses:
            return self.unresolvable("no address", now)
        self._dest = addresses[0]
        return self._event(Ev.RESOLVED, now)

    def unresolvable(self, reason: str, now: float) -> list[RegisterOutput]:
        if self.state is not State.RESOLVING:
            return []
        self.reason = f"{self.account.registrar} does not resolve: {reason}"
        return self._event(Ev.UNRESOLVABLE, now)

    def receive(self, response: Response, now: float) -> list[RegisterOutput]:
        """A response with the registration's Call-ID."""
        key = (response.top_via().branch or "", response.cseq().method.upper())
        if self._tx is None or key != self._key:
            return []  # an abandoned or finished REGISTER's
        return self._outputs(self._tx.receive_response(response, now), now)

    def tick(self, now: float) -> list[RegisterOutput]:
        out: list[RegisterOutput] = []
        if self._tx is not None:
            out += self._outputs(self._tx.tick(now), now)
        if self.expires_at is not None and self.expires_at <= now:
            self.expires_at = None  # the binding ran out while its refresh failed
            out.append(self._status())
        if self.refresh_at is not None and self.refresh_at <= now:
            self.refresh_at = None
            out += self._event(Ev.REFRESH, now)
        if self.retry_at is not None and self.retry_at <= now:
            self.retry_at = None
            out += self._event(Ev.RETRY, now)
        return out

    # -- the table's interpreter -------------------------------------------------------

    def _event(self, ev: Ev, now: float, response: Response | None = None) -> list[RegisterOutput]:
        row = TABLE.get((self.state, ev))
        if row is None:
            return []
        self.state, ops = row
        out: list[RegisterOutput] = []
        for op in ops:  # an op that may change the state itself (AUTHENTICATE …) is last
            self._run(op, now, response, out)
        return out

    def _run(
        self, op: Op, now: float, response: Response | None, out: list[RegisterOutput]
    ) -> None:
        if op is Op.LOOKUP:
            out.append(Lookup(self.account.registrar, self.account.transport))
        elif op is Op.REGISTER:
            self._challenges = 0
            self._register(now, out, self._expires)
        elif op is Op.AUTHENTICATE:
            assert response is not None
            self._authenticate(response, now, out)
        elif op is Op.LENGTHEN:
            assert response is not None
            floor = (response.headers.get("Min-Expires") or "").strip()
            if not is_digits(floor) or not self._expires < int(floor) <= MAX_EXPIRES:
                self.reason = "423 without a usable Min-Expires"
                self._fail(now, out)
                return
            self._expires = int(floor)
            self._register(now, out, self._expires)
        elif op is Op.GRANTED:
            assert response is not None
            self._granted(response, now)
        elif op is Op.BACK_OFF:
            self._back_off(now)
        elif op is Op.REMOVE:
            self.refresh_at = self.retry_at = None
            self._challenges = 0
            self._stale = []
            if self.expires_at is None or self._dest is None:  # nothing to remove
                self.state = State.STOPPED
                self._run(Op.END, now, None, out)
                self._run(Op.REPORT, now, None, out)
            else:
                self._register(now, out, 0)
        elif op is Op.ABANDON:
            self._tx = self._key = None
        elif op is Op.END:
            self.expires_at = self.refresh_at = self.retry_at = None
            self.reason = "stopped"
        elif op is Op.REPORT:
            out.append(self._status())

    def _status(self) -> Status:
        return Status(self.state, self.reason, self.expires_at, self.retry_at)

    def _fail(self, now: float, out: list[RegisterOutput]) -> None:
        """An op found the request cannot go on: as a failure response would."""
        self._tx = self._key = None
        out += self._event(Ev.FAILURE, now)

    # -- ops ----------------------------------------------------------------------------

    def _register(self, now: float, out: list[RegisterOutput], expires: int) -> None:
        account, config = self.account, self.config
        assert self._dest is not None
        self._cseq += 1
        branch = MAGIC_COOKIE + self._new_id()
        headers = Headers()
        transport = account.transport
        headers.add("Via", f"SIP/2.0/{transport} {config.sent_by};branch={branch};rport")
        headers.add("Max-Forwards", "70")
        headers.add("From", f"<{account.aor}>;tag={self.tag}")
        headers.add("To", f"<{account.aor}>")
        headers.add("Call-ID", self.call_id)
        headers.add("CSeq", f"{self._cseq} REGISTER")
        registrar = SipUri.parse(account.registrar)
        if "lr" in registrar.params:  # an outbound proxy in front of the registrar
            headers.add("Route", f"<{account.registrar}>")
        headers.add("Contact", f"<{account.contact}>;expires={expires}")
        for stale in self._stale if expires else []:
            headers.add("Contact", f"<{stale}>;expires=0")
        headers.add("Expires", str(expires))
        headers.add("User-Agent", config.user_agent)
        request_uri = str(SipUri(registrar.scheme, None, registrar.host, registrar.port))
        if self.digest is not None:
            for name, value in self.digest.headers("REGISTER", request_uri):
                headers.add(name, value)
        request = Request(headers, b"", "REGISTER", request_uri)
        self._tx = NonInviteClientTransaction(request, transport != "UDP", config.timers)
        self._key = (branch, "REGISTER")
        out += self._outputs(self._tx.start(now), now)

    def _authenticate(self, response: Response, now: float, out: list[RegisterOutput]) -> None:
        self._challenges += 1
        why = (
            "no credentials for this account"
            if self.digest is None
            else "challenged too many times"
            if self._challenges > MAX_CHALLENGES
            else self.digest.accept(response)
        )
        if why is not None:
            self.reason = f"{response.status} {response.reason[:64]} ({why})"
            self._fail(now, out)
            return
        expires = 0 if self.state is State.UNREGISTERING else self._expires
        self._register(now, out, expires)

    def _granted(self, response: Response, now: float) -> None:
        ours = _contact_key(self.account.contact)
        user = ours[1]
        granted: int | None = None
        stale: list[str] = []
        for value in response.headers.get_all("Contact"):
            try:
                contact = NameAddr.parse(value)
                key = _contact_key(contact.uri)
            except ValueError:
                continue
            if key == ours:
                raw = contact.params.get("expires", "")
                granted = int(raw) if is_digits(raw) else granted
            elif key[1] == user and key not in self._removed:
                stale.append(contact.uri)
                self._removed.add(key)  # asked once: a registrar that keeps it is let be
        if granted is None:
            raw = (response.headers.get("Expires") or "").strip()
            granted = int(raw) if is_digits(raw) else self._expires
        granted = min(granted, MAX_EXPIRES)
        self._failures = 0
        self.retry_at = None
        self.expires_at = now + granted
        self.refresh_at = now + max(granted / 2, granted - REFRESH_MARGIN_S)
        self.reason = f"{response.status} {response.reason[:64]}, {granted} s"
        self._stale = stale
        if stale:  # another worker's binding of this account, at its address: removed now
            self.refresh_at = now

    def _back_off(self, now: float) -> None:
        account = self.account
        delay = min(account.retry_max, account.retry_min * 2**self._failures)
        self._failures += 1
        self.retry_at = now + delay * (0.5 + self._jitter() / 2)
        self.refresh_at = None

    # -- transaction outputs ---------------------------------------------------------

    def _outputs(self, outputs: list[Output], now: float) -> list[RegisterOutput]:
        """The open REGISTER's outputs: its sends, then what its answer means."""
        out: list[RegisterOutput] = []
        events: list[tuple[Ev, Response | None]] = []
        dest = self._dest
        assert dest is not None
        for item in outputs:
            if isinstance(item, Transmit):
                out.append(SendRequest(item.data, dest, self.account.transport))
            elif isinstance(item, TimedOut):  # Timer F
                self._tx = self._key = None
                self.reason = f"no response from {self.account.registrar[:100]} (Timer F)"
                events.append((Ev.FAILURE, None))
            elif isinstance(item, PassUp) and item.response.status >= 200:
                self._tx = self._key = None  # a retransmitted final is let go
                final = item.response
                ev = _classify(final.status)
                if ev is Ev.FAILURE:
                    self.reason = f"{final.status} {final.reason[:64]}"
                events.append((ev, final))
        for ev, response in events:
            out += self._event(ev, now, response)
        return out


def _classify(status: int) -> Ev:
    if status < 300:
        return Ev.OK
    if status in (401, 407):
        return Ev.CHALLENGE
    if status == 423:
        return Ev.TOO_BRIEF
    return Ev.FAILURE


def _contact_key(uri: str) -> tuple[str, str | None, str, int]:
    """A Contact URI compared as registrars do (§10.3: scheme, user, host, port)."""
    parsed = SipUri.parse(uri)
    port = parsed.port or (5061 if parsed.scheme == "sips" else 5060)
    return (parsed.scheme, parsed.user, parsed.host.lower(), port)
