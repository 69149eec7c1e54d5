"""A call that outlives its worker, on every backend (memory, Redis, Cluster): the live state
its owner writes, the fence on the owner's writes, and the takeover that moves the call.

See :mod:`telephony_edge.calls.live_state` and :mod:`telephony_edge.calls.migration`.
"""

from __future__ import annotations

import asyncio

import pytest

from telephony_edge.coord.base import Conflict, Coordinator, Document, LiveUpdate
from tests.coord.test_contract import PAST_TTL, TTL, coord, make_record, new_id

__all__ = ["coord"]  # the backends' fixture, shared with the contract suite

HELLO = {"role": "assistant", "content": "Hello.", "ts": 1.5}
ASKED = {"role": "user", "content": "What is the time?", "ts": 3.25}
CALLED = {"name": "clock", "params": {"tz": "UTC"}, "ts": 3.5}


async def owned_by(coord: Coordinator, worker: str, state: str = "active") -> str:
    call_id = new_id()
    await coord.create_call(call_id, make_record(state=state, owner=worker))
    return call_id


async def test_live_state_documents_replace_and_the_conversation_appends(
    coord: Coordinator,
) -> None:
    first, second = await owned_by(coord, "w1"), await owned_by(coord, "w1")
    assert await coord.get_live(first) is None
    written = await coord.put_live(
        "w1",
        {
            first: LiveUpdate({"played": 1}, chat=[HELLO]),
            second: LiveUpdate({"played": 7}),
        },
        ttl=10,
    )
    assert written == {first, second}
    await coord.put_live("w1", {first: LiveUpdate({"played": 2}, [ASKED], [CALLED])}, ttl=10)
    live = await coord.get_live(first)
    assert live is not None
    assert live.doc == {"played": 2}  # the last document, whole
    assert live.chat == [HELLO, ASKED]  # every entry, in order
    assert live.function_calls == [CALLED]
    other = await coord.get_live(second)
    assert other is not None and (other.doc, other.chat, other.function_calls) == (
        {"played": 7},
        [],
        [],
    )
    await coord.drop_live(first)
    await coord.drop_live(first)  # dropping nothing does nothing
    assert await coord.get_live(first) is None
    assert await coord.put_live("w1", {}, ttl=10) == set()


async def test_live_state_is_written_only_by_the_calls_owner(coord: Coordinator) -> None:
    ours, theirs, gone = await owned_by(coord, "w1"), await owned_by(coord, "w2"), new_id()
    updates = {call_id: LiveUpdate({"n": 1}, [HELLO]) for call_id in (ours, theirs, gone)}
    assert await coord.put_live("w1", updates, ttl=10) == {ours}
    assert await coord.get_live(theirs) is None  # another worker's call is left alone
    assert await coord.get_live(gone) is None


async def test_live_state_expires_after_its_ttl(coord: Coordinator) -> None:
    call_id = await owned_by(coord, "w1")
    await coord.put_live("w1", {call_id: LiveUpdate({"n": 1}, [HELLO], [CALLED])}, ttl=TTL)
    await asyncio.sleep(PAST_TTL)
    assert await coord.get_live(call_id) is None


async def test_take_over_moves_a_live_call_once_per_generation(coord: Coordinator) -> None:
    call_id = await owned_by(coord, "w1")
    assert await coord.claim_owner(call_id, "w1", ttl=10)  # the old owner's lease still runs
    await coord.update_call(call_id, {"generation": 1})  # taken over once before
    results = await asyncio.gather(
        *(
            coord.take_over(call_id, f"w{n}", generation=1, ttl=10, changes={"moved": n})
            for n in (2, 3, 4)
        ),
        return_exceptions=True,
    )
    won = [r for r in results if isinstance(r, Document)]
    assert len(won) == 1 and sum(isinstance(r, Conflict) for r in results) == 2
    [doc] = won
    winner = doc.data["owner"]
    assert doc.data["moved"] == int(winner[1:]) and doc.data["state"] == "active"
    assert doc.data["generation"] == 2
    assert await coord.owner_of(call_id) == winner  # the lease went with it
    assert not await coord.claim_owner(call_id, "w1", ttl=10)
    # the old owner's writes are fenced off; the new owner's go through
    with pytest.raises(Conflict):
        await coord.update_call(call_id, {"state": "ended"}, if_owner="w1")
    assert await coord.put_live("w1", {call_id: LiveUpdate({"n": 1})}, ttl=10) == set()
    assert await coord.put_live(winner, {call_id: LiveUpdate({"n": 2})}, ttl=10) == {call_id}
    updated = await coord.update_call(call_id, {"state": "ended"}, if_owner=winner)
    assert updated is not None and updated.data["state"] == "ended"


async def test_take_over_needs_a_live_call_at_its_generation(coord: Coordinator) -> None:
    fresh = await owned_by(coord, "w1")
    with pytest.raises(Conflict):  # a stale generation: the call moved on since
        await coord.take_over(fresh, "w2", generation=3, ttl=10)
    doc = await coord.take_over(fresh, "w2", generation=0, ttl=10)  # no field: generation 0
    assert doc is not None and (doc.data["owner"], doc.data["generation"]) == ("w2", 1)
    with pytest.raises(Conflict):  # taken over from generation 0 already
        await coord.take_over(fresh, "w3", generation=0, ttl=10)
    for state in ("created", "ended"):
        call_id = await owned_by(coord, "w1", state=state)
        with pytest.raises(Conflict) as info:
            await coord.take_over(call_id, "w2", generation=0, ttl=10)
        assert info.value.current.data["owner"] == "w1"
    assert await coord.take_over(new_id(), "w2", generation=0, ttl=10) is None


async def test_update_if_owner_admits_the_owner_or_none(coord: Coordinator) -> None:
    call_id = new_id()
    await coord.create_call(call_id, make_record(owner=None))
    doc = await coord.update_call(call_id, {"state": "connecting", "owner": "w1"}, if_owner="w1")
    assert doc is not None and doc.data["owner"] == "w1"
    with pytest.raises(Conflict):
        await coord.update_call(call_id, {"state": "active"}, if_owner="w2")
    assert await coord.update_call("call_nope", {"x": 1}, if_owner="w1") is None
