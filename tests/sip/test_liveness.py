"""SIP workers watching each other (issue 24, SIP): a worker that stops beating is dead
within a second, and its live SIP calls are taken over, each first by one survivor, at the
generation read (sip/liveness.py; the coordinator in memory, its clock the test's)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest

from telephony_edge.coord.memory import MemoryCoordinator
from telephony_edge.sip import liveness
from telephony_edge.sip.liveness import ALIVE_S, Liveness, first_choice


@dataclass
class Clock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class FakeResumer:
    """What the watch needs of the resumer: the coordinator, a task spawner, resume."""

    coordinator: MemoryCoordinator
    resumed: list[tuple[str, int | None]] = field(default_factory=list)
    lost_at: list[float | None] = field(default_factory=list)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def endpoint(self) -> Any:
        return self

    @property
    def services(self) -> Any:
        return self

    def _spawn(self, coro: Any) -> None:
        self.tasks.append(asyncio.ensure_future(coro))

    async def resume(
        self, call_id: str, generation: int | None = None, lost_at: float | None = None
    ) -> bool:
        self.resumed.append((call_id, generation))
        self.lost_at.append(lost_at)
        return True


async def test_a_worker_that_stops_beating_has_its_sip_calls_taken_over(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(liveness, "BACKUP_AFTER_S", 0.0)
    clock = Clock()
    coordinator = MemoryCoordinator(clock=clock)
    for call_id, owner, provider, generation in [
        ("call-1", "a", "sip", 0),
        ("call-2", "a", "sip", 2),
        ("call-3", "a", "twilio", 0),  # Twilio brings its calls back by itself
        ("call-4", "c", "sip", 0),  # another worker's, alive
    ]:
        record = {"call_id": call_id, "state": "active", "agent_id": "x", "provider": provider}
        record["owner"] = owner
        await coordinator.create_call(call_id, {**record, "generation": generation})
    watchers = {w: FakeResumer(coordinator) for w in ("a", "b", "c")}
    beats = {w: Liveness(r, w) for w, r in watchers.items()}  # type: ignore[arg-type]
    for beat in beats.values():
        assert await beat.beat() == []
    for beat in beats.values():
        await beat.beat()  # everyone has seen everyone

    last_beat = time.time()
    clock.now += ALIVE_S + 0.01  # a stopped beating: its last beat lapsed
    for worker in ("b", "c"):
        await beats[worker].coordinator.heartbeat(liveness.PREFIX + worker, {}, ttl=ALIVE_S)
    assert await beats["b"].beat() == ["a"]
    assert await beats["c"].beat() == ["a"]
    for resumer in watchers.values():
        await asyncio.gather(*resumer.tasks)

    asked = Counter(call for r in (watchers["b"], watchers["c"]) for call in r.resumed)
    # each of a's SIP calls asked of both survivors (its first choice, then the other)
    assert asked == {("call-1", 0): 2, ("call-2", 2): 2}
    # the move's gap counts from a's last beat seen, not from when its absence was noticed
    lost = [at for r in watchers.values() for at in r.lost_at]
    assert lost and all(at is not None and last_beat - 0.5 < at <= last_beat for at in lost)
    for call_id in ("call-1", "call-2"):
        first = first_choice({"b", "c"}, call_id)
        assert watchers[first].resumed.index((call_id, 2 if call_id == "call-2" else 0)) < 2


def test_the_first_choice_of_a_call_moves_only_when_that_worker_goes() -> None:
    survivors = {f"w{i}" for i in range(5)}
    calls = [f"call-{i}" for i in range(200)]
    before = {c: first_choice(survivors, c) for c in calls}
    assert len(set(before.values())) == 5  # spread over all
    after = {c: first_choice(survivors - {"w3"}, c) for c in calls}
    assert all(after[c] == before[c] for c in calls if before[c] != "w3")


async def test_a_gap_in_what_was_seen_is_no_death() -> None:
    """The coordinator away for a beat: nobody is declared dead from that."""
    clock = Clock()
    coordinator = MemoryCoordinator(clock=clock)
    resumer = FakeResumer(coordinator)
    beat = Liveness(resumer, "b")  # type: ignore[arg-type]
    await coordinator.heartbeat(liveness.PREFIX + "a", {}, ttl=ALIVE_S)
    await beat.beat()
    beat._seen = {}  # what run() does when a beat fails
    clock.now += ALIVE_S + 0.01
    assert await beat.beat() == []
    assert resumer.tasks == []
