"""The Coordinator contract: every backend must pass every test here.

To add a backend, add a factory to ``BACKENDS``: given the fixture request
(to get fixtures such as a server lazily), an async context manager yielding
a fresh, empty coordinator. Times are real and short, because the Redis
backend counts them on the server's clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from redis.asyncio import Redis

from telephony_edge.coord import Conflict, Coordinator, Document, Job, MemoryCoordinator
from telephony_edge.coord.base import LapsedLease
from telephony_edge.coord.redis import RedisCoordinator

TTL = 0.1  # short expiry used throughout
PAST_TTL = 0.2  # sleep this long to be sure TTL has passed


@contextlib.asynccontextmanager
async def memory_backend(request: pytest.FixtureRequest) -> AsyncIterator[Coordinator]:
    coord = MemoryCoordinator(ended_call_ttl=TTL)
    try:
        yield coord
    finally:
        await coord.close()


@contextlib.asynccontextmanager
async def redis_backend(
    request: pytest.FixtureRequest, server_fixture: str = "redis_server"
) -> AsyncIterator[Coordinator]:
    """The session's private redis-server; a fresh key prefix keeps each test's keys apart."""
    url = request.getfixturevalue(server_fixture).url
    prefix = f"te-test-{uuid.uuid4().hex[:12]}:"
    coord = RedisCoordinator.from_url(url, key_prefix=prefix, ended_call_ttl=TTL)
    try:
        yield coord
    finally:
        await coord.close()
        cleaner = Redis.from_url(url)
        try:
            async for key in cleaner.scan_iter(match=f"{prefix}*"):
                await cleaner.unlink(key)
        finally:
            await cleaner.aclose()


Backend = Callable[[pytest.FixtureRequest], contextlib.AbstractAsyncContextManager[Coordinator]]
BACKENDS: dict[str, Backend] = {
    "memory": memory_backend,
    "redis": redis_backend,
    # The same backend on a one-node Redis Cluster, which refuses any step whose
    # keys span two hash slots: proof that the scripts are ready for Cluster.
    "redis-cluster": functools.partial(redis_backend, server_fixture="redis_cluster_node"),
}


@pytest.fixture(params=sorted(BACKENDS))
async def coord(request: pytest.FixtureRequest) -> AsyncIterator[Coordinator]:
    async with BACKENDS[request.param](request) as c:
        yield c


def make_record(**kw: Any) -> dict[str, Any]:
    return {"state": "created", "agent_id": "agent-1", "provider": "twilio", **kw}


def new_id() -> str:
    return f"call_{uuid.uuid4().hex}"


# -- lifecycle ---------------------------------------------------------------


async def test_ping(coord: Coordinator) -> None:
    assert await coord.ping() is True


# -- call records ------------------------------------------------------------


async def test_create_get_roundtrip(coord: Coordinator) -> None:
    call_id = new_id()
    data = make_record(metadata={"userName": "Ada", "n": [1, 2]})
    created = await coord.create_call(call_id, data)
    assert created == Document(data=data, version=1)
    got = await coord.get_call(call_id)
    assert got == created
    assert got is not None and got.data is not data


async def test_create_is_once(coord: Coordinator) -> None:
    call_id = new_id()
    assert await coord.create_call(call_id, make_record(n=1)) is not None
    assert await coord.create_call(call_id, make_record(n=2)) is None
    got = await coord.get_call(call_id)
    assert got is not None and got.data["n"] == 1


async def test_record_needs_a_state(coord: Coordinator) -> None:
    with pytest.raises(ValueError):
        await coord.create_call(new_id(), {"agent_id": "a"})
    call_id = new_id()
    await coord.create_call(call_id, make_record())
    with pytest.raises(ValueError):
        await coord.update_call(call_id, {"state": None})


async def test_get_unknown_is_none(coord: Coordinator) -> None:
    assert await coord.get_call("call_nope") is None


async def test_stored_record_is_not_aliased(coord: Coordinator) -> None:
    call_id, data = new_id(), make_record(metadata={"a": 1})
    await coord.create_call(call_id, data)
    data["metadata"]["a"] = 2
    got = await coord.get_call(call_id)
    assert got is not None and got.data["metadata"] == {"a": 1}


ODD_VALUES: dict[str, Any] = {
    "empty_list": [],
    "empty_map": {},
    "nested": {"a": [[], {}, [1, {"b": None}]]},
    "big": 2**63 + 1,
    "third": 1 / 3,
    "text": 'Zoë 👋 "quoted" \\ / \u2028',
    "flags": [True, False, None],
}


async def test_values_survive_exactly_as_json(coord: Coordinator) -> None:
    call_id = new_id()
    created = await coord.create_call(call_id, make_record(**ODD_VALUES))
    assert created is not None and created.data == make_record(**ODD_VALUES)
    updated = await coord.update_call(call_id, {"more": ODD_VALUES, "empty_list": [0]})
    assert updated is not None
    assert updated.data["more"] == ODD_VALUES and updated.data["empty_map"] == {}
    assert await coord.get_call(call_id) == updated
    assert await coord.list_active_calls() == [updated]
    await coord.enqueue(Q, "odd", ODD_VALUES)
    job = await coord.reserve(Q, visibility_timeout=30)
    assert job is not None and job.data == ODD_VALUES
    await coord.heartbeat("w1", ODD_VALUES, ttl=30)
    assert await coord.live_workers() == {"w1": ODD_VALUES}


async def test_active_list_excludes_ended_and_ended_expires(coord: Coordinator) -> None:
    live, done = new_id(), new_id()
    await coord.create_call(live, make_record())
    await coord.create_call(done, make_record())
    assert len(await coord.list_active_calls()) == 2

    await coord.update_call(done, {"state": "ended", "call_status": "user-ended"})
    active = await coord.list_active_calls()
    assert [d.data["state"] for d in active] == ["created"]
    assert await coord.get_call(done) is not None

    await asyncio.sleep(PAST_TTL)
    assert await coord.get_call(done) is None
    assert await coord.get_call(live) is not None  # live calls never expire


async def test_explicit_ttl_on_ended_record(coord: Coordinator) -> None:
    call_id = new_id()
    await coord.create_call(call_id, make_record())
    await coord.update_call(call_id, {"state": "ended"}, ttl=30)
    await asyncio.sleep(PAST_TTL)
    assert await coord.get_call(call_id) is not None


async def test_ttl_on_a_live_record(coord: Coordinator) -> None:
    call_id = new_id()
    await coord.create_call(call_id, make_record(), ttl=TTL)
    await asyncio.sleep(PAST_TTL)
    assert await coord.get_call(call_id) is None
    assert await coord.list_active_calls() == []


async def test_update_merges_named_fields_and_counts_versions(coord: Coordinator) -> None:
    call_id = new_id()
    await coord.create_call(call_id, make_record(metadata={"k": "v"}))
    updated = await coord.update_call(call_id, {"provider_status": "completed"})
    assert updated is not None and updated.version == 2
    assert updated.data["provider_status"] == "completed"
    assert updated.data["metadata"] == {"k": "v"}
    # a second writer's field survives the first writer's update
    await coord.update_call(call_id, {"owner": "w1"})
    got = await coord.get_call(call_id)
    assert got is not None and got.version == 3
    assert (got.data["provider_status"], got.data["owner"]) == ("completed", "w1")


async def test_compare_and_set_on_state(coord: Coordinator) -> None:
    call_id = new_id()
    await coord.create_call(call_id, make_record())
    moved = await coord.update_call(call_id, {"state": "connecting"}, if_state={"created"})
    assert moved is not None and moved.data["state"] == "connecting"
    with pytest.raises(Conflict) as info:
        await coord.update_call(call_id, {"state": "ended"}, if_state={"created"})
    assert info.value.current == moved
    got = await coord.get_call(call_id)
    assert got == moved


async def test_compare_and_set_on_version(coord: Coordinator) -> None:
    call_id = new_id()
    first = await coord.create_call(call_id, make_record())
    assert first is not None
    await coord.update_call(call_id, {"a": 1}, if_version=first.version)
    with pytest.raises(Conflict):
        await coord.update_call(call_id, {"a": 2}, if_version=first.version)
    got = await coord.get_call(call_id)
    assert got is not None and got.data["a"] == 1 and got.version == 2


async def test_concurrent_compare_and_set_has_one_winner(coord: Coordinator) -> None:
    call_id = new_id()
    await coord.create_call(call_id, make_record())

    async def end(status: str) -> bool:
        try:
            await coord.update_call(
                call_id, {"state": "ended", "call_status": status}, if_state={"created"}
            )
        except Conflict:
            return False
        return True

    wins = await asyncio.gather(*(end(f"s{i}") for i in range(10)))
    assert sum(wins) == 1


async def test_update_unknown_call(coord: Coordinator) -> None:
    assert await coord.update_call("call_nope", {"provider_status": "x"}) is None
    assert await coord.update_call("call_nope", {"x": 1}, if_state={"created"}) is None
    assert await coord.get_call("call_nope") is None


# -- pending registrations ---------------------------------------------------


async def test_claim_pending_exactly_once_under_concurrency(coord: Coordinator) -> None:
    assert await coord.register_pending("sip:abc", {"call_id": "c1", "n": 1}, ttl=30)
    results = await asyncio.gather(*(coord.claim_pending("sip:abc") for _ in range(50)))
    winners = [r for r in results if r is not None]
    assert winners == [{"call_id": "c1", "n": 1}]
    assert await coord.claim_pending("sip:abc") is None


async def test_peek_pending_leaves_it_in_place(coord: Coordinator) -> None:
    assert await coord.peek_pending("p") is None
    await coord.register_pending("p", {"call_id": "c1"}, ttl=30)
    assert await coord.peek_pending("p") == {"call_id": "c1"}
    assert await coord.claim_pending("p") == {"call_id": "c1"}
    assert await coord.peek_pending("p") is None


async def test_register_pending_refuses_duplicate_key(coord: Coordinator) -> None:
    assert await coord.register_pending("k", {"v": 1}, ttl=30)
    assert not await coord.register_pending("k", {"v": 2}, ttl=30)
    assert await coord.claim_pending("k") == {"v": 1}
    assert await coord.register_pending("k", {"v": 3}, ttl=30)  # free again once claimed


async def test_pending_expires(coord: Coordinator) -> None:
    await coord.register_pending("tok", {"x": 1}, ttl=TTL)
    await asyncio.sleep(PAST_TTL)
    assert await coord.claim_pending("tok") is None
    assert await coord.register_pending("tok", {"x": 2}, ttl=30)


# -- routes (read by a SIP proxy in front of the workers) -----------------------


async def test_a_route_is_replaced_and_dropped_only_by_its_target(coord: Coordinator) -> None:
    await coord.put_route("sip:dialog-1", "sip:10.0.0.1:5060", ttl=30)
    await coord.put_route("sip:dialog-1", "sip:10.0.0.2:5060", ttl=30)  # the call moved
    assert await coord.get_route("sip:dialog-1") == "sip:10.0.0.2:5060"
    assert not await coord.drop_route("sip:dialog-1", "sip:10.0.0.1:5060")  # not its any more
    assert await coord.drop_route("sip:dialog-1", "sip:10.0.0.2:5060")
    assert not await coord.drop_route("sip:dialog-1", "sip:10.0.0.2:5060")
    assert await coord.get_route("sip:dialog-1") is None


async def test_a_route_expires(coord: Coordinator) -> None:
    await coord.put_route("sip:dialog-2", "sip:10.0.0.1:5060", ttl=TTL)
    await asyncio.sleep(PAST_TTL)
    assert not await coord.drop_route("sip:dialog-2", "sip:10.0.0.1:5060")
    assert await coord.get_route("sip:dialog-2") is None


# -- ownership ---------------------------------------------------------------


async def test_ownership_single_owner(coord: Coordinator) -> None:
    results = await asyncio.gather(*(coord.claim_owner("c1", f"w{i}") for i in range(10)))
    assert results.count(True) == 1
    owner = await coord.owner_of("c1")
    assert owner == f"w{results.index(True)}"
    assert await coord.claim_owner("c1", owner)  # idempotent for the owner
    other = "w0" if owner != "w0" else "w1"
    assert not await coord.release_owner("c1", other)
    assert await coord.owner_of("c1") == owner
    assert await coord.release_owner("c1", owner)
    assert await coord.owner_of("c1") is None
    assert await coord.claim_owner("c1", other)


# -- control messages --------------------------------------------------------


async def _next(it: AsyncIterator[Any], wait: float = 1.0) -> Any:
    return await asyncio.wait_for(anext(it), wait)


async def test_control_goes_to_owner_only(coord: Coordinator) -> None:
    await coord.claim_owner("c1", "w1")
    await coord.claim_owner("c2", "w2")
    w1 = coord.control_messages("w1")
    w2 = coord.control_messages("w2")
    try:
        assert await coord.publish_control("c1", {"action": "hangup"})
        assert await coord.publish_control("c2", {"action": "transfer", "destination": "+1555"})
        assert await _next(w1) == ("c1", {"action": "hangup"})
        assert await _next(w2) == ("c2", {"action": "transfer", "destination": "+1555"})
        with pytest.raises(TimeoutError):
            await _next(w1, wait=0.1)
    finally:
        await w1.aclose()
        await w2.aclose()


async def test_control_to_a_worker_that_does_not_own_the_call(coord: Coordinator) -> None:
    await coord.claim_owner("c1", "w1")
    w2 = coord.control_messages("w2")
    try:
        await coord.send_control("w2", "c1", {"action": "resume", "generation": 3})
        await coord.send_control("w2", "c-unowned", {"action": "resume"})
        assert await _next(w2) == ("c1", {"action": "resume", "generation": 3})
        assert await _next(w2) == ("c-unowned", {"action": "resume"})
    finally:
        await w2.aclose()


async def test_control_without_owner_is_refused(coord: Coordinator) -> None:
    assert not await coord.publish_control("c-unowned", {"action": "hangup"})


async def test_control_waits_for_late_subscriber_in_order(coord: Coordinator) -> None:
    await coord.claim_owner("c1", "w1")
    for i in range(3):
        assert await coord.publish_control("c1", {"seq": i})
    it = coord.control_messages("w1")
    try:
        got = [await _next(it) for _ in range(3)]
        assert got == [("c1", {"seq": 0}), ("c1", {"seq": 1}), ("c1", {"seq": 2})]
    finally:
        await it.aclose()


async def test_control_wakes_a_waiting_subscriber(coord: Coordinator) -> None:
    await coord.claim_owner("c1", "w1")
    it = coord.control_messages("w1")
    try:
        waiter = asyncio.ensure_future(_next(it))
        await asyncio.sleep(0.05)
        assert not waiter.done()
        await coord.publish_control("c1", {"action": "hangup"})
        assert await waiter == ("c1", {"action": "hangup"})
    finally:
        await it.aclose()


async def test_control_message_is_delivered_once_across_consumers(coord: Coordinator) -> None:
    await coord.claim_owner("c1", "w1")
    await coord.publish_control("c1", {"seq": 0})
    await coord.publish_control("c1", {"seq": 1})
    first = coord.control_messages("w1")
    try:
        assert await _next(first) == ("c1", {"seq": 0})
    finally:
        await first.aclose()
    second = coord.control_messages("w1")  # e.g. the worker restarted its listener
    try:
        assert await _next(second) == ("c1", {"seq": 1})
        with pytest.raises(TimeoutError):
            await _next(second, wait=0.1)
    finally:
        await second.aclose()


async def test_owner_lease_lapses_unless_renewed(coord: Coordinator) -> None:
    assert await coord.claim_owner("c1", "w1", ttl=TTL)
    assert not await coord.claim_owner("c1", "w2", ttl=TTL)
    await asyncio.sleep(PAST_TTL)
    assert await coord.owner_of("c1") is None
    assert not await coord.publish_control("c1", {"action": "hangup"})
    assert await coord.claim_owner("c1", "w2", ttl=TTL)  # a lapsed lease is free to take
    assert await coord.owner_of("c1") == "w2"


async def test_renew_leases_renews_held_leases_and_their_slots(coord: Coordinator) -> None:
    short = 3 * TTL
    assert await coord.claim_owner("c1", "w1", ttl=short)
    assert await coord.acquire_agent_slot("a1", "c1", limit=2, ttl=short)
    assert await coord.claim_owner("c2", "w2", ttl=short)  # someone else's
    assert await coord.acquire_agent_slot("a1", "c2", limit=2, ttl=short)
    assert await coord.claim_owner("c4", "w1", ttl=short)  # ours, its slot released
    assert await coord.acquire_agent_slot("a2", "c4", limit=1, ttl=short)
    await coord.release_agent_slot("a2", "c4")
    renewed = await coord.renew_leases(
        "w1", {"c1": "a1", "c2": "a1", "c3": None, "c4": "a2"}, ttl=10.0
    )
    assert renewed == {"c1", "c4"}  # c2 is w2's, c3 has no owner
    assert await coord.renew_leases("w1", {}, ttl=10.0) == set()
    await asyncio.sleep(short + TTL)
    assert await coord.owners_of(["c1", "c2", "c3", "c4"]) == {
        "c1": "w1",
        "c2": None,
        "c3": None,
        "c4": "w1",
    }
    assert await coord.agent_slots_in_use("a1") == 1  # c1's renewed, c2's lapsed with its lease
    assert await coord.agent_slots_in_use("a2") == 0  # a released slot is not revived
    assert await coord.owners_of([]) == {}


async def test_update_if_unowned_races_the_lease(coord: Coordinator) -> None:
    call_id = new_id()
    await coord.create_call(call_id, make_record(state="active"))
    assert await coord.claim_owner(call_id, "w1", ttl=TTL)
    with pytest.raises(Conflict) as info:
        await coord.update_call(call_id, {"state": "ended"}, if_state=["active"], if_unowned=True)
    assert info.value.current.data["state"] == "active"
    await asyncio.sleep(PAST_TTL)  # the owner died: its lease lapses
    results = await asyncio.gather(
        *(
            coord.update_call(call_id, {"state": "ended"}, if_state=["active"], if_unowned=True)
            for _ in range(5)
        ),
        return_exceptions=True,
    )
    assert sum(isinstance(r, Document) for r in results) == 1  # reaped exactly once
    assert sum(isinstance(r, Conflict) for r in results) == 4
    assert await coord.update_call("call_nope", {"x": 1}, if_unowned=True) is None


async def test_control_reply_sent_before_or_after_the_wait(coord: Coordinator) -> None:
    await coord.send_reply("t1", {"ok": True}, ttl=5)
    assert await coord.wait_reply("t1", within=1) == {"ok": True}
    assert await coord.wait_reply("t1", within=TTL) is None  # taken once

    waiting = asyncio.create_task(coord.wait_reply("t2", within=3))
    await asyncio.sleep(TTL)
    assert not waiting.done()
    await coord.send_reply("t2", {"ok": False, "error": "boom"}, ttl=5)
    assert await asyncio.wait_for(waiting, 2) == {"ok": False, "error": "boom"}

    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await coord.wait_reply("t3", within=2 * TTL) is None
    assert 2 * TTL * 0.9 <= loop.time() - started < 1.0


async def test_control_reply_expires(coord: Coordinator) -> None:
    await coord.send_reply("t1", {"ok": True}, ttl=TTL)
    await asyncio.sleep(PAST_TTL)
    assert await coord.wait_reply("t1", within=TTL) is None


async def test_page_active_calls_filters_and_pages_by_id(coord: Coordinator) -> None:
    ids = sorted(new_id() for _ in range(7))
    for i, call_id in enumerate(ids):
        state = "ended" if i == 6 else "active" if i % 2 == 0 else "created"
        region = "eu" if i < 4 else "us"
        await coord.create_call(
            call_id, make_record(call_id=call_id, state=state, owner="w1", region=region)
        )
    await coord.create_call(new_id(), make_record(state="active"))  # no call_id field: skipped
    where = {"state": "active", "owner": "w1"}
    page, cursor = await coord.page_active_calls(where=where, limit=2)
    assert [c for c, _ in page] == [ids[0], ids[2]] and cursor == ids[2]
    assert all(doc.data["call_id"] == c for c, doc in page)
    # a call created meanwhile before the cursor does not shift the next page
    await coord.create_call(ids[0] + "0", make_record(call_id=ids[0] + "0", state="active"))
    page, cursor = await coord.page_active_calls(where=where, after=cursor, limit=2)
    assert [c for c, _ in page] == [ids[4]] and cursor is None
    page, _ = await coord.page_active_calls(where={**where, "region": "us"}, limit=10)
    assert [c for c, _ in page] == [ids[4]]
    page, _ = await coord.page_active_calls(where={"owner": "w1"}, limit=10)
    assert [c for c, _ in page] == ids[:6]  # every live state, not the ended one
    with pytest.raises(ValueError):
        await coord.page_active_calls(limit=0)


# -- agent slots -------------------------------------------------------------


async def test_agent_slots_limit(coord: Coordinator) -> None:
    results = await asyncio.gather(
        *(coord.acquire_agent_slot("a1", f"c{i}", limit=3) for i in range(8))
    )
    assert results.count(True) == 3
    assert await coord.agent_slots_in_use("a1") == 3
    holder = f"c{results.index(True)}"
    assert await coord.acquire_agent_slot("a1", holder, limit=3)  # idempotent
    assert not await coord.acquire_agent_slot("a1", "c-new", limit=3)
    assert await coord.acquire_agent_slot("a2", "c-new", limit=3)  # per agent
    await coord.release_agent_slot("a1", holder)
    await coord.release_agent_slot("a1", "never-held")
    assert await coord.agent_slots_in_use("a1") == 2
    assert await coord.acquire_agent_slot("a1", "c-new", limit=3)


async def test_agent_slot_expires(coord: Coordinator) -> None:
    assert await coord.acquire_agent_slot("a1", "c1", limit=1, ttl=TTL)
    assert not await coord.acquire_agent_slot("a1", "c2", limit=1)
    await asyncio.sleep(PAST_TTL)
    assert await coord.agent_slots_in_use("a1") == 0
    assert await coord.acquire_agent_slot("a1", "c2", limit=1)


# -- heartbeats --------------------------------------------------------------


async def test_heartbeats_expire_and_forget(coord: Coordinator) -> None:
    await coord.heartbeat("w1", {"calls": 2, "region": "eu"}, ttl=TTL)
    await coord.heartbeat("w2", {"calls": 0}, ttl=30)
    await coord.heartbeat("w3", {"calls": 0}, ttl=30)
    assert await coord.live_workers() == {
        "w1": {"calls": 2, "region": "eu"},
        "w2": {"calls": 0},
        "w3": {"calls": 0},
    }
    await coord.heartbeat("w2", {"calls": 5}, ttl=30)
    await coord.forget_worker("w3")
    await asyncio.sleep(PAST_TTL)
    assert await coord.live_workers() == {"w2": {"calls": 5}}


# -- durable queue -----------------------------------------------------------

Q = "test-webhooks"


async def test_queue_enqueue_reserve_ack(coord: Coordinator) -> None:
    assert await coord.enqueue(Q, "j1", {"url": "http://x", "n": 1})
    assert not await coord.enqueue(Q, "j1", {"url": "other"})  # idempotent by id
    assert await coord.queue_length(Q) == 1
    job = await coord.reserve(Q, visibility_timeout=30)
    assert job is not None
    assert (job.job_id, job.data, job.attempts) == ("j1", {"url": "http://x", "n": 1}, 1)
    assert await coord.reserve(Q, visibility_timeout=30) is None  # hidden while reserved
    await coord.ack(Q, job.job_id)
    assert await coord.queue_length(Q) == 0
    assert await coord.reserve(Q, visibility_timeout=0) is None


async def test_queue_redelivers_after_visibility_timeout(coord: Coordinator) -> None:
    await coord.enqueue(Q, "j1", {"n": 1})
    first = await coord.reserve(Q, visibility_timeout=TTL)
    assert first is not None and first.attempts == 1
    assert await coord.reserve(Q, visibility_timeout=TTL) is None
    await asyncio.sleep(PAST_TTL)  # the reserving worker "died"
    second = await coord.reserve(Q, visibility_timeout=TTL)
    assert second is not None
    assert (second.job_id, second.data, second.attempts) == ("j1", {"n": 1}, 2)
    # the dead worker's stale nack must not reschedule the new reservation
    assert not await coord.nack(Q, first, delay=0)
    assert await coord.reserve(Q, visibility_timeout=TTL) is None


async def test_queue_nack_delays_retry(coord: Coordinator) -> None:
    await coord.enqueue(Q, "j1", {})
    job = await coord.reserve(Q, visibility_timeout=30)
    assert job is not None
    assert await coord.nack(Q, job, delay=TTL)
    assert await coord.reserve(Q, visibility_timeout=30) is None  # not yet due
    await asyncio.sleep(PAST_TTL)
    again = await coord.reserve(Q, visibility_timeout=30)
    assert again is not None and again.attempts == 2


async def test_queue_delay_and_order(coord: Coordinator) -> None:
    await coord.enqueue(Q, "later", {}, delay=TTL)
    await coord.enqueue(Q, "a", {})
    await asyncio.sleep(0.01)
    await coord.enqueue(Q, "b", {})
    ids = []
    while (job := await coord.reserve(Q, visibility_timeout=30)) is not None:
        ids.append(job.job_id)
    assert ids == ["a", "b"]
    await asyncio.sleep(PAST_TTL)
    job = await coord.reserve(Q, visibility_timeout=30)
    assert job is not None and job.job_id == "later"


async def test_queue_concurrent_reserve_hands_each_job_once(coord: Coordinator) -> None:
    for i in range(5):
        await coord.enqueue(Q, f"j{i}", {"i": i})
    jobs = await asyncio.gather(*(coord.reserve(Q, visibility_timeout=30) for _ in range(20)))
    got = sorted(j.job_id for j in jobs if j is not None)
    assert got == [f"j{i}" for i in range(5)]


async def test_ack_after_takeover_and_queues_are_separate(coord: Coordinator) -> None:
    await coord.enqueue(Q, "j1", {})
    await coord.enqueue("other-queue", "j1", {"other": True})
    job = await coord.reserve(Q, visibility_timeout=30)
    assert job is not None
    await coord.ack(Q, "j1")
    assert await coord.queue_length(Q) == 0
    assert await coord.queue_length("other-queue") == 1
    assert not await coord.nack(Q, job, delay=0)  # gone


async def test_queue_at_least_once_when_a_consumer_dies(coord: Coordinator) -> None:
    """Two workers on one store: B takes over what A reserved and never acked."""
    a, b = coord, _sibling(coord)
    try:
        assert await a.enqueue(Q, "call_1", {"n": 1})
        taken = await a.reserve(Q, visibility_timeout=TTL)
        assert taken is not None and taken.attempts == 1
        assert await b.reserve(Q, visibility_timeout=TTL) is None  # still A's
        await asyncio.sleep(PAST_TTL)  # A died holding it
        again = await b.reserve(Q, visibility_timeout=TTL)
        assert again is not None
        assert (again.job_id, again.data, again.attempts) == ("call_1", {"n": 1}, 2)
        assert not await a.nack(Q, taken, delay=0)  # A's late answer is fenced off
        assert not await a.dead_letter(Q, taken, "late")
        await b.ack(Q, again.job_id)
        assert await a.queue_length(Q) == 0
        await asyncio.sleep(PAST_TTL)
        assert await a.reserve(Q, visibility_timeout=TTL) is None  # acked: gone for good
    finally:
        if b is not a:
            await b.close()


def _sibling(coord: Coordinator) -> Coordinator:
    """Another worker's coordinator on the same store (memory: the one store is this object)."""
    if not isinstance(coord, RedisCoordinator):
        return coord
    url = coord._redis.connection_pool.connection_kwargs
    client = Redis(host=url["host"], port=url["port"], decode_responses=True)
    return RedisCoordinator(client, key_prefix=coord._prefix, ended_call_ttl=TTL)


async def test_queue_enqueue_is_once_per_job_id(coord: Coordinator) -> None:
    assert await coord.enqueue(Q, "call_1", {"n": 1})
    job = await coord.reserve(Q, visibility_timeout=30)
    assert job is not None
    await coord.ack(Q, job.job_id)
    # delivered; a second worker ending the same call must not queue it again
    assert not await coord.enqueue(Q, "call_1", {"n": 2})
    assert await coord.queue_length(Q) == 0
    assert await coord.reserve(Q, visibility_timeout=0) is None
    assert await coord.enqueue("other-queue", "call_1", {})  # per queue


async def fail_until_dead(coord: Coordinator, job_id: str, max_attempts: int) -> Job:
    """Reserve and fail ``job_id`` as a dispatcher would, dead-lettering the last attempt."""
    while True:
        job = await coord.reserve(Q, visibility_timeout=30)
        assert job is not None and job.job_id == job_id
        if job.attempts >= max_attempts:
            assert await coord.dead_letter(Q, job, f"http status 503 (attempt {job.attempts})")
            return job
        assert await coord.nack(Q, job, delay=0)


async def test_dead_letter_after_n_attempts(coord: Coordinator) -> None:
    await coord.enqueue(Q, "call_1", {"url": "http://x", "n": 1})
    job = await fail_until_dead(coord, "call_1", max_attempts=3)
    assert job.attempts == 3
    assert await coord.queue_length(Q) == 0
    assert await coord.reserve(Q, visibility_timeout=0) is None
    assert await coord.dead_letter_count(Q) == 1
    [dead] = await coord.dead_letters(Q)
    assert (dead.job_id, dead.data, dead.attempts) == ("call_1", {"url": "http://x", "n": 1}, 3)
    assert dead.reason == "http status 503 (attempt 3)"
    assert abs(dead.dead_at - time.time()) < 5
    assert not await coord.enqueue(Q, "call_1", {})  # still once per id
    assert not await coord.dead_letter(Q, job, "again")  # gone from the queue
    assert await coord.dead_letter_count("other-queue") == 0


async def test_dead_letters_listed_newest_first_and_retried(coord: Coordinator) -> None:
    for i in range(3):
        await coord.enqueue(Q, f"call_{i}", {"i": i})
        await fail_until_dead(coord, f"call_{i}", max_attempts=1)
        await asyncio.sleep(0.005)
    assert [d.job_id for d in await coord.dead_letters(Q)] == ["call_2", "call_1", "call_0"]
    assert [d.job_id for d in await coord.dead_letters(Q, limit=2)] == ["call_2", "call_1"]
    assert await coord.dead_letters(Q, limit=0) == []
    assert await coord.retry_dead_letter(Q, "call_1")
    assert not await coord.retry_dead_letter(Q, "call_1")  # no longer dead
    assert not await coord.retry_dead_letter(Q, "call_unknown")
    assert await coord.dead_letter_count(Q) == 2 and await coord.queue_length(Q) == 1
    job = await coord.reserve(Q, visibility_timeout=30)
    assert job is not None and (job.job_id, job.data, job.attempts) == ("call_1", {"i": 1}, 1)
    await coord.ack(Q, job.job_id)
    assert [d.job_id for d in await coord.dead_letters(Q)] == ["call_2", "call_0"]


async def test_dead_letters_are_bounded(coord: Coordinator) -> None:
    assert isinstance(coord, MemoryCoordinator | RedisCoordinator)
    coord._dead_max = 2  # the bound is a constructor option of both backends
    for i in range(3):
        await coord.enqueue(Q, f"call_{i}", {})
        await fail_until_dead(coord, f"call_{i}", max_attempts=1)
        await asyncio.sleep(0.005)
    assert [d.job_id for d in await coord.dead_letters(Q)] == ["call_2", "call_1"]
    assert await coord.dead_letter_count(Q) == 2


# -- session continuation ------------------------------------------------------------


async def test_session_put_get_replace_and_expire(coord: Coordinator) -> None:
    assert await coord.get_session("sess_1") is None
    data = {"metadata": {"n": [1, {}]}, "chat": [{"role": "user", "text": "Zoë"}]}
    await coord.put_session("sess_1", data, ttl=30)
    assert await coord.get_session("sess_1") == data
    await coord.put_session("sess_1", {"chat": []}, ttl=TTL)
    assert await coord.get_session("sess_1") == {"chat": []}
    await asyncio.sleep(PAST_TTL)
    assert await coord.get_session("sess_1") is None


# -- the leases index and the setup index (what reapers read) ---------------------------


async def test_lapsed_leases_lists_the_unreleased_lapsed_leases_of_live_calls(
    coord: Coordinator,
) -> None:
    lapsed, held, released, over, gone = (new_id() for _ in range(5))
    for call_id in (lapsed, held, released, over):
        await coord.create_call(call_id, make_record(state="active"))
    for call_id in (lapsed, released, over, gone):
        assert await coord.claim_owner(call_id, "w1", ttl=TTL)
    assert await coord.claim_owner(held, "w2", ttl=30)
    assert await coord.release_owner(released, "w1")
    await coord.update_call(over, {"state": "ended"}, ttl=30)
    assert await coord.lapsed_leases(0.0) == ([], None)  # nothing lapsed yet
    await asyncio.sleep(PAST_TTL)
    found, cursor = await coord.lapsed_leases(0.0)
    assert found == [LapsedLease(lapsed, "active", "w1")] and cursor is None
    assert await coord.lapsed_leases(30.0) == ([], None)  # not lapsed that long
    assert await coord.claim_owner(lapsed, "w2", ttl=30)  # taken again: not lapsed
    assert await coord.lapsed_leases(0.0) == ([], None)
    with pytest.raises(ValueError):
        await coord.lapsed_leases(0.0, limit=0)


async def test_lapsed_leases_page_with_a_cursor(coord: Coordinator) -> None:
    ids = [new_id() for _ in range(7)]
    for call_id in ids:
        await coord.create_call(call_id, make_record(state="connecting"))
    # one renewal gives all its leases the same expiry: the cursor orders ties by id
    for call_id in ids:
        assert await coord.claim_owner(call_id, "w1", ttl=30)
    assert await coord.renew_leases("w1", dict.fromkeys(ids), ttl=TTL) == set(ids)
    await asyncio.sleep(PAST_TTL)
    seen: list[str] = []
    cursor = None
    for _ in range(10):
        page, cursor = await coord.lapsed_leases(0.0, limit=3, after=cursor)
        assert len(page) <= 3
        seen += [lease.call_id for lease in page]
        if cursor is None:
            break
    assert sorted(seen) == sorted(ids) and len(seen) == len(ids)


async def test_aged_calls_lists_calls_still_in_a_state_once_old_enough(
    coord: Coordinator,
) -> None:
    waiting, connected, ended = new_id(), new_id(), new_id()
    for call_id in (waiting, connected, ended):
        await coord.create_call(call_id, make_record())
    assert await coord.aged_calls("created", TTL) == ([], None)  # too young
    await coord.update_call(connected, {"state": "connecting"})
    await coord.update_call(ended, {"state": "ended"}, ttl=30)
    await asyncio.sleep(PAST_TTL)
    assert await coord.aged_calls("created", TTL) == ([waiting], None)
    assert await coord.aged_calls("created", 30.0) == ([], None)
    more = [new_id() for _ in range(5)]
    for call_id in more:
        await coord.create_call(call_id, make_record())
    await asyncio.sleep(PAST_TTL)
    seen: list[str] = []
    cursor = None
    for _ in range(10):
        ids, cursor = await coord.aged_calls("created", TTL, limit=2, after=cursor)
        seen += ids
        if cursor is None:
            break
    assert sorted(seen) == sorted([waiting, *more])


async def test_page_active_calls_reads_only_the_fields_asked_for(coord: Coordinator) -> None:
    call_id = new_id()
    await coord.create_call(
        call_id, make_record(call_id=call_id, owner="w1", metadata={"big": "x" * 100})
    )
    page, cursor = await coord.page_active_calls(where={"state": "created"}, fields=["owner"])
    assert cursor is None
    [(found, doc)] = page
    assert found == call_id
    assert doc.data == {"call_id": call_id, "owner": "w1", "state": "created"}


async def test_a_page_holds_the_records_exactly_as_stored(coord: Coordinator) -> None:
    call_id = new_id()
    await coord.create_call(call_id, make_record(call_id=call_id, **ODD_VALUES))
    await coord.update_call(call_id, {"more": ODD_VALUES})
    [(found, doc)] = (await coord.page_active_calls())[0]
    assert found == call_id and doc == await coord.get_call(call_id)
    [(_, some)] = (await coord.page_active_calls(fields=["text", "big", "nested"]))[0]
    assert some.data == {
        "call_id": call_id,
        **{k: ODD_VALUES[k] for k in ("text", "big", "nested")},
    }
    assert some.version == 2
