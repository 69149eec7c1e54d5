"""Password guessing against digest authentication, limited (sans-I/O: the time is passed in).

Theory of operation
-------------------
A trunk's digest credentials are checked for INVITEs from the trunk's
address range, and anyone in that range (a shared carrier block, a cloud
region) may guess. :class:`FailureGuard` counts failed attempts (a good
nonce, a wrong digest) per key in a fixed window; the ``limit``-th failure in
``window`` seconds locks the key for ``lockout`` seconds, during which its
attempts are refused without being checked. :class:`DigestGuard` keeps two:

* per **source address**: one guesser is stopped after ``limit`` tries;
* per **username** (the trunk's credential being guessed), with a higher
  limit: guessing spread over many addresses is stopped too. A source that
  authenticated successfully within the lockout time is exempt from the
  username's lock (but never from its own), so the trunk itself keeps
  calling while strangers in its range are locked out.

Failures need a nonce the edge bound to the guesser's own address
(:mod:`telephony_edge.sip.auth`), so a spoofed source cannot lock a trunk
out: it never sees the 401 that carries the nonce.

Memory is bounded: each table is an LRU of ``max_keys`` entries.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

MAX_KEYS = 10_000


@dataclass(slots=True)
class _Count:
    failures: int
    since: float  # the window's start
    locked_until: float = 0.0


class FailureGuard:
    """Failures per key; ``limit`` in ``window`` s locks the key for ``lockout`` s."""

    def __init__(self, limit: int, window: float, lockout: float, max_keys: int = MAX_KEYS):
        self.limit = limit
        self.window = window
        self.lockout = lockout
        self.max_keys = max_keys
        self._counts: OrderedDict[str, _Count] = OrderedDict()

    def __len__(self) -> int:
        return len(self._counts)

    def locked(self, key: str, now: float) -> float:
        """Seconds until ``key`` may try again (0: it may now)."""
        count = self._counts.get(key)
        return max(0.0, count.locked_until - now) if count is not None else 0.0

    def failed(self, key: str, now: float) -> bool:
        """One failure of ``key``; True when it locks the key."""
        count = self._counts.get(key)
        if count is None or now - count.since > self.window:
            count = _Count(0, now, count.locked_until if count else 0.0)
        count.failures += 1
        self._counts[key] = count
        self._counts.move_to_end(key)
        while len(self._counts) > self.max_keys:
            self._counts.popitem(last=False)
        if count.failures >= self.limit:
            count.locked_until = now + self.lockout
            count.failures, count.since = 0, now
            return True
        return False


@dataclass(frozen=True, slots=True)
class GuardLimits:
    per_source: int = 20
    per_username: int = 100
    window: float = 300.0
    lockout: float = 900.0


DEFAULT_LIMITS = GuardLimits()


class DigestGuard:
    """Per source and per username; see the module docstring."""

    def __init__(self, limits: GuardLimits = DEFAULT_LIMITS, max_keys: int = MAX_KEYS) -> None:
        self.limits = limits
        self.sources = FailureGuard(limits.per_source, limits.window, limits.lockout, max_keys)
        self.usernames = FailureGuard(limits.per_username, limits.window, limits.lockout, max_keys)
        self._good: OrderedDict[str, float] = OrderedDict()  # source → its last success
        self.max_keys = max_keys

    def locked(self, source: str, username: str, now: float) -> float:
        """Seconds until ``source`` may try ``username`` again (0: now)."""
        wait = self.sources.locked(source, now)
        trusted = now - self._good.get(source, float("-inf")) <= self.limits.lockout
        if not trusted:
            wait = max(wait, self.usernames.locked(username, now))
        return wait

    def failed(self, source: str, username: str, now: float) -> bool:
        """A wrong digest; True when it locks the source or the username."""
        by_source = self.sources.failed(source, now)
        by_username = self.usernames.failed(username, now)
        return by_source or by_username

    def succeeded(self, source: str, now: float) -> None:
        self._good[source] = now
        self._good.move_to_end(source)
        while len(self._good) > self.max_keys:
            self._good.popitem(last=False)
