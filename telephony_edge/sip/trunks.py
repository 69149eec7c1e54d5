"""Who may call (sans-I/O): registered call ids from anywhere, the edge's numbers from trunks.

:meth:`Admission.check` decides on a new INVITE before any call state exists:

1. a source outside every trunk's networks that keeps sending INVITEs that
   are not admitted is cut off: each refusal (here, or the shell's 404 for an
   unknown call id: :meth:`Admission.penalize`) takes a token from the
   source's bucket (bounded table), and while the bucket is empty every
   INVITE from it is dropped unanswered. Admitted calls take nothing, so a
   busy PBX is never slowed down;
2. a Request-URI user shaped like a call id (``call_…``) is admitted: the
   shell then claims its registration exactly once (404 otherwise), the call
   id being the secret; so is the Contact user the edge registers for an
   account (``sip.accounts``: the registrar's calls to it, routed as calls to
   the account's number), that user being the secret;
3. a dialled number of the number config (provider ``sip``) is admitted only
   from a trunk whose CIDRs hold the source and which may call that number,
   and, when the trunk has credentials, only with a good digest
   (:mod:`telephony_edge.sip.auth`: 401 to challenge, 403 for bad ones; the
   nonce bound to the source and Call-ID, a replayed ``nc`` challenged again
   with ``stale=true``), and not while :mod:`telephony_edge.sip.auth_guard`
   has the source or the trunk's username locked out for guessing (403,
   unchecked). Each digest outcome goes to the ``on_digest`` callback (the
   shell counts and warns);
4. everything else is refused 403, or dropped unanswered when the operator
   chose ``drop_unknown`` (scanners learn nothing).
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field

from telephony_edge.rate_limit import RateLimiter
from telephony_edge.sip.auth import DigestServer, Outcome, binding
from telephony_edge.sip.auth_guard import DigestGuard
from telephony_edge.sip.message import Request
from telephony_edge.sip.sdes import Policy
from telephony_edge.sip.sources import source_key
from telephony_edge.sip.uri import SipUri

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
CALL_ID_PREFIX = "call_"
MAX_BLOCKED = 10_000  # sources cut off at once (beyond, the oldest are let go)


@dataclass(frozen=True, slots=True)
class Trunk:
    name: str
    networks: tuple[Network, ...]
    numbers: frozenset[str] = frozenset()  # empty: every SIP number
    username: str | None = None
    password: str | None = None
    realm: str = ""
    algorithms: tuple[str, ...] = ("SHA-256", "MD5")  # offered in this order
    refer_to: str | None = None  # the trunk's own Refer-To scheme (tel / sip)
    srtp: Policy | None = None  # its calls' SRTP policy (None: ``sip.srtp``)

    def holds(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in net for net in self.networks)

    def may_call(self, number: str) -> bool:
        return not self.numbers or number in self.numbers


class Decision(enum.Enum):
    ADMIT = "admit"
    CHALLENGE = "challenge"  # 401 with the headers
    REFUSE = "refuse"  # 403
    DROP = "drop"  # no answer at all


@dataclass(frozen=True, slots=True)
class Verdict:
    decision: Decision
    reason: str = ""
    trunk: Trunk | None = None
    number: str | None = None  # the dialled number (None: a registered call id)
    headers: list[tuple[str, str]] = field(default_factory=list)


#: (outcome, source address, trunk name): ok, challenged, stale, replayed, bad, locked
DigestEvent = Callable[[str, str, str], None]


class Admission:
    """See the module docstring."""

    def __init__(
        self,
        trunks: list[Trunk],
        dialled: Callable[[str], str | None],
        *,
        drop_unknown: bool = False,
        rate_per_minute: float = 120.0,
        burst: int = 20,
        digest: DigestServer | None = None,
        guard: DigestGuard | None = None,
        on_digest: DigestEvent | None = None,
        registered: Callable[[str], str | None] | None = None,
    ) -> None:
        self.trunks = trunks
        self._dialled = dialled
        self._registered = registered or (lambda user: None)
        self.drop_unknown = drop_unknown
        self.limiter = RateLimiter(rate_per_minute, burst)
        self.digest = digest or DigestServer()
        self.guard = guard or DigestGuard()
        self._on_digest = on_digest or (lambda outcome, source, trunk: None)
        self._blocked: dict[str, float] = {}  # source → until when its INVITEs are dropped

    def check(self, req: Request, source: tuple[str, int], now: float) -> Verdict:
        address = source[0]
        if self._blocked.get(address, 0.0) > now:
            return Verdict(Decision.DROP, "too many refused INVITEs from this source")
        verdict = self._decide(req, address, now)
        if verdict.decision in (Decision.REFUSE, Decision.DROP) and self.penalize(address, now):
            return Verdict(Decision.DROP, f"{verdict.reason}; source cut off")
        return verdict

    def penalize(self, address: str, now: float) -> bool:
        """One INVITE from ``address`` was refused; True if the source is now cut off."""
        if any(t.holds(address) for t in self.trunks):
            return False
        wait = self.limiter.take(address, now)
        if not wait:
            return False
        if len(self._blocked) >= MAX_BLOCKED:
            for source in [s for s, until in self._blocked.items() if until <= now]:
                del self._blocked[source]
            while len(self._blocked) >= MAX_BLOCKED:
                del self._blocked[next(iter(self._blocked))]
        self._blocked[address] = now + wait
        return True

    def _decide(self, req: Request, address: str, now: float) -> Verdict:
        try:
            user = SipUri.parse(req.uri).user or ""
        except ValueError:
            user = ""
        if user.startswith(CALL_ID_PREFIX):
            return Verdict(Decision.ADMIT)
        account_number = self._registered(user) if user else None
        if account_number is not None:
            return Verdict(Decision.ADMIT, number=account_number)
        number = self._dialled(user) if user else None
        if number is None:
            return self._unknown("neither a call id nor one of the edge's SIP numbers")
        trunk = next((t for t in self.trunks if t.holds(address) and t.may_call(number)), None)
        if trunk is None:
            return self._unknown(f"{address} is no trunk allowed to call {number}")
        if trunk.username is None or trunk.password is None:
            return Verdict(Decision.ADMIT, trunk=trunk, number=number)
        return self._digest(req, address, trunk, number, now)

    def _digest(self, req: Request, address: str, trunk: Trunk, number: str, now: float) -> Verdict:
        """A trunk with credentials: locked out, challenged, refused or admitted."""
        assert trunk.username is not None and trunk.password is not None
        source = source_key(address)  # an IPv6 /64 counts as one guesser
        wait = self.guard.locked(source, trunk.username, now)
        if wait:
            self._on_digest("locked", address, trunk.name)
            reason = f"digest for trunk {trunk.name} locked out for {wait:.0f} s (guessing)"
            return Verdict(Decision.REFUSE, reason)
        bound = binding(address, req.call_id(), req.method)
        outcome = self.digest.verify(
            req.headers.get("Authorization"),
            req.method,
            req.uri,
            trunk.realm,
            trunk.username,
            trunk.password,
            now,
            trunk.algorithms,
            bound=bound,
        )
        if outcome is Outcome.OK:
            self.guard.succeeded(source, now)
            self._on_digest("ok", address, trunk.name)
            return Verdict(Decision.ADMIT, trunk=trunk, number=number)
        if outcome is Outcome.BAD:
            locked = self.guard.failed(source, trunk.username, now)
            self._on_digest("bad", address, trunk.name)
            why = "; now locked out" if locked else ""
            return Verdict(Decision.REFUSE, f"bad credentials from trunk {trunk.name}{why}")
        stale = outcome in (Outcome.STALE, Outcome.REPLAY)
        event = {Outcome.STALE: "stale", Outcome.REPLAY: "replayed"}.get(outcome, "challenged")
        self._on_digest(event, address, trunk.name)
        headers = self.digest.challenge(trunk.realm, now, stale, trunk.algorithms, bound=bound)
        return Verdict(Decision.CHALLENGE, f"digest {event}", trunk, number, headers)

    def _unknown(self, reason: str) -> Verdict:
        return Verdict(Decision.DROP if self.drop_unknown else Decision.REFUSE, reason)
