"""The live-state writer on its own: what a beat writes, and what it does not (the Redis cost
per call-minute is one write per call per beat at most, none while nothing changes)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from telephony_edge.calls.live_state import LiveSnapshot, LiveStates
from telephony_edge.coord import MemoryCoordinator
from telephony_edge.coord.base import LiveUpdate


@dataclass
class Call:
    """A live call's state as its bridge gives it (``live_snapshot``)."""

    call_id: str
    doc: dict[str, Any] = field(default_factory=lambda: {"playback": {"agent_ms": 0}})
    chat: list[dict[str, Any]] = field(default_factory=list)
    live: bool = True

    def live_snapshot(self) -> LiveSnapshot | None:
        return LiveSnapshot(dict(self.doc), self.chat, []) if self.live else None


class CountingCoordinator(MemoryCoordinator):
    """Counts the steps and what each wrote; ``away`` makes them fail as an outage does."""

    def __init__(self) -> None:
        super().__init__()
        self.steps: list[dict[str, LiveUpdate]] = []
        self.away = False

    async def put_live(self, worker_id: str, updates: Any, ttl: float) -> set[str]:
        if self.away:
            raise ConnectionError("coordinator away")
        self.steps.append(dict(updates))
        return await super().put_live(worker_id, updates, ttl)


async def owned(coord: MemoryCoordinator, *calls: Call) -> None:
    for call in calls:
        await coord.create_call(call.call_id, {"state": "active", "owner": "w1"})


async def test_one_step_for_all_calls_and_nothing_when_nothing_changed() -> None:
    coord = CountingCoordinator()
    a, b, quiet = Call("a"), Call("b"), Call("c", live=False)
    await owned(coord, a, b, quiet)
    writer = LiveStates(coord, "w1", ttl_s=60, interval_s=1)
    assert await writer.flush([a, b, quiet]) == 2  # one step, two calls (c has no state yet)
    assert len(coord.steps) == 1 and set(coord.steps[0]) == {"a", "b"}
    assert await writer.flush([a, b, quiet]) == 0  # unchanged: no step at all
    assert len(coord.steps) == 1

    a.chat.append({"role": "user", "content": "hello", "ts": 1.0})
    b.doc = {"playback": {"agent_ms": 1000}}
    assert await writer.flush([a, b]) == 2
    step = coord.steps[-1]
    assert step["a"].chat == [{"role": "user", "content": "hello", "ts": 1.0}]  # only what is new
    assert step["b"].chat == [] and step["b"].doc == {"playback": {"agent_ms": 1000}}
    live = await coord.get_live("a")
    assert live is not None and [e["content"] for e in live.chat] == ["hello"]


async def test_a_failed_or_refused_write_is_carried_by_the_next_beat() -> None:
    coord = CountingCoordinator()
    call, moved = Call("a"), Call("m")
    await owned(coord, call)
    await coord.create_call("m", {"state": "active", "owner": "w2"})  # taken over
    writer = LiveStates(coord, "w1", ttl_s=60, interval_s=1)
    call.chat.append({"role": "assistant", "content": "one", "ts": 1.0})
    coord.away = True
    with pytest.raises(ConnectionError):  # (the writer's loop logs it and beats on)
        await writer.flush([call, moved])
    coord.away = False
    call.chat.append({"role": "user", "content": "two", "ts": 2.0})
    assert await writer.flush([call, moved]) == 1  # m is another worker's now: not written
    assert [e["content"] for e in coord.steps[-1]["a"].chat] == ["one", "two"]
    assert await writer.flush([call, moved]) == 0  # a's is written; m's is not ours to write
    assert set(coord.steps[-1]) == {"m"}


async def test_a_hand_off_is_saved_at_once_with_its_marker_and_adopted_calls_append() -> None:
    coord = CountingCoordinator()
    call = Call("a", chat=[{"role": "user", "content": "x", "ts": 1.0}])
    await owned(coord, call)
    writer = LiveStates(coord, "w1", ttl_s=60, interval_s=1)
    writer.adopt("a", chat=1, function_calls=0)  # taken over: its chat is stored already
    snapshot = call.live_snapshot()
    assert snapshot is not None
    assert await writer.save("a", snapshot, "drain")
    [update] = coord.steps[-1].values()
    assert update.chat == [] and update.doc["moving"]["cause"] == "drain"
    assert update.doc["moving"]["from_worker"] == "w1"


async def test_a_recording_entry_costs_a_write_only_when_a_part_starts() -> None:
    coord = CountingCoordinator()
    call = Call("a")
    await owned(coord, call)
    entry: dict[str, Any] = {"started_at": 1.0, "parts": [{"file": "a.wav", "start_s": 0.0}]}
    writer = LiveStates(coord, "w1", ttl_s=60, interval_s=1, recording=lambda call_id: dict(entry))
    assert await writer.flush([call]) == 1
    assert coord.steps[-1]["a"].doc["recording"] == entry
    for _ in range(60):  # a minute of the recording growing: no write of its own
        assert await writer.flush([call]) == 0
    assert len(coord.steps) == 1
    entry["parts"] = [*entry["parts"], {"file": "a.g1.wav", "start_s": 31.0}]  # a takeover
    assert await writer.flush([call]) == 1
    assert await writer.save("a", call.live_snapshot() or LiveSnapshot({}, [], []), "drain")
    live = await coord.get_live("a")
    assert live is not None and live.doc["recording"] == entry and "moving" in live.doc
