"""Password guessing: failures per source and per username lock out, bounded, time passed in."""

from __future__ import annotations

from telephony_edge.sip.auth_guard import DigestGuard, FailureGuard, GuardLimits


def test_the_limit_th_failure_in_the_window_locks_for_the_lockout() -> None:
    guard = FailureGuard(limit=3, window=60.0, lockout=100.0)
    assert not guard.failed("a", 0.0) and not guard.failed("a", 1.0)
    assert guard.locked("a", 1.0) == 0.0
    assert guard.failed("a", 2.0)  # the third in 60 s
    assert guard.locked("a", 2.0) == 100.0 and guard.locked("a", 101.0) == 1.0
    assert guard.locked("a", 102.0) == 0.0 and guard.locked("b", 2.0) == 0.0
    assert not guard.failed("c", 0.0) and not guard.failed("c", 1.0)
    assert not guard.failed("c", 70.0)  # a new window: the count starts again


def test_the_table_is_bounded() -> None:
    guard = FailureGuard(limit=2, window=60.0, lockout=100.0, max_keys=100)
    for n in range(1000):
        guard.failed(f"10.0.{n // 256}.{n % 256}", 0.0)
    assert len(guard) == 100


def test_guessing_from_many_sources_locks_the_username_but_not_its_trunk() -> None:
    guard = DigestGuard(GuardLimits(per_source=5, per_username=10, window=60.0, lockout=300.0))
    guard.succeeded("192.0.2.1", 0.0)  # the trunk itself authenticated
    for n in range(10):  # two tries each from ten addresses: no source reaches 5
        guard.failed(f"192.0.2.{100 + n}", "edge", 1.0)
    assert guard.locked("192.0.2.150", "edge", 2.0) == 300.0 - 1.0  # a stranger: locked
    assert guard.locked("192.0.2.1", "edge", 2.0) == 0.0  # the trunk keeps calling
    for _ in range(5):
        guard.failed("192.0.2.1", "edge", 3.0)
    assert guard.locked("192.0.2.1", "edge", 3.0) == 300.0  # but not past its own limit
