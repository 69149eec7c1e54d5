"""What only the Redis backend has: key layout, hash slots, TTLs, outages, URLs, Sentinel."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.crc import key_slot
from redis.exceptions import RedisError, ResponseError

from telephony_edge.config_loading import ConfigError, load_settings
from telephony_edge.coord import Conflict, MemoryCoordinator
from telephony_edge.coord.factory import create_coordinator
from telephony_edge.coord.redis import RedisCoordinator
from telephony_edge.coord.redis_url import (
    SentinelTarget,
    check_redis_url,
    parse_sentinel_url,
    redact_redis_url,
)
from tests.coord.redis_servers import RedisProcess, redis_server, sentinel_topology

Server = RedisProcess


@pytest.fixture
async def raw(redis_server: Server) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_server.url, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
async def coord(redis_server: Server, raw: Redis) -> AsyncIterator[RedisCoordinator]:
    prefix = f"te-redis-{uuid.uuid4().hex[:12]}:"
    coordinator = RedisCoordinator.from_url(redis_server.url, key_prefix=prefix)
    yield coordinator
    await coordinator.close()
    async for key in raw.scan_iter(match=f"{prefix}*"):
        await raw.unlink(key)


async def keys_of(raw: Redis, coord: RedisCoordinator) -> list[str]:
    return sorted([key async for key in raw.scan_iter(match=f"{coord._prefix}*")])


async def exercise(coord: RedisCoordinator, call_id: str, worker: str = "w1") -> None:
    """Touch every kind of key once."""
    await coord.create_call(call_id, {"state": "created"})
    await coord.claim_owner(call_id, worker)
    await coord.publish_control(call_id, {"action": "hangup"})
    await coord.acquire_agent_slot("agent-1", call_id, limit=5)
    await coord.heartbeat(worker, {"calls": 1}, ttl=30)
    await coord.enqueue("webhooks", call_id, {"url": "http://x"}, delay=60)
    await coord.enqueue("webhooks", call_id + "-now", {"url": "http://x"})
    job = await coord.reserve("webhooks", visibility_timeout=30)
    assert job is not None
    assert await coord.dead_letter("webhooks", job, "http status 503")
    await coord.register_pending(f"sip:{call_id}", {"call_id": call_id}, ttl=30)
    await coord.put_session(f"sess-{call_id}", {"chat": []}, ttl=30)


# -- key layout and hash slots -------------------------------------------------------------


async def test_keys_carry_the_prefix_and_one_call_is_one_slot(
    coord: RedisCoordinator, raw: Redis, redis_cluster_node: Server
) -> None:
    call_id = "call_0123"
    await exercise(coord, call_id)
    keys = await keys_of(raw, coord)
    assert keys and all(k.startswith(coord._prefix) for k in keys)
    call_keys = [
        k for k in keys if call_id in k and not any(w in k for w in ("pending", "queue", "session"))
    ]
    doc, index = coord._doc_keys(call_id)
    assert {doc, coord._owner_key(call_id)} <= set(call_keys)
    # the record, its owner and its bucket's active index: one slot (what one script touches)
    slots = {key_slot(k.encode()) for k in [*call_keys, index]}
    assert len(slots) == 1
    async with Redis(port=redis_cluster_node.port) as cluster:  # the server's own hashing
        assert slots == {await cluster.execute_command("CLUSTER", "KEYSLOT", doc)}
    for group in (coord._queue_keys("webhooks"), coord._worker_keys()):
        assert len({key_slot(k.encode()) for k in group}) == 1


async def test_calls_spread_over_buckets(coord: RedisCoordinator) -> None:
    slots = {key_slot(coord._doc_keys(f"call_{i}")[0].encode()) for i in range(500)}
    assert len(slots) == 32


async def test_cluster_node_refuses_cross_slot_scripts(redis_cluster_node: Server) -> None:
    """Guard for the contract's redis-cluster run: the node really checks slots."""
    client = Redis.from_url(redis_cluster_node.url)
    try:
        with pytest.raises(ResponseError, match=r"(?i)slot"):
            await client.eval("return redis.call('MSET', KEYS[1], 1, KEYS[2], 2)", 2, "a", "b")
    finally:
        await client.aclose()


# -- expiry ----------------------------------------------------------------------------------


async def test_every_abandonable_key_has_a_ttl_and_no_queue_key_has_one(
    coord: RedisCoordinator, raw: Redis
) -> None:
    """What a dead worker abandons expires; what an eviction policy must not take has no TTL.

    ``volatile-*`` eviction picks only keys with a TTL, so a queue key with one
    could be dropped with its jobs (before: every queue key expired a week after
    it was last written).
    """
    ended, live = "call_ended", "call_live"
    await exercise(coord, ended)
    await coord.update_call(ended, {"state": "ended"})
    await coord.create_call(live, {"state": "active"})
    indexes = (":active", ":leases", ":holders", ":created")
    no_ttl = {coord._doc_keys(live)[0]} | {
        key for key in await keys_of(raw, coord) if key.endswith(indexes)
    }
    queue = {key for key in coord._queue_keys("webhooks") if await raw.exists(key)}
    assert len(queue) == 8  # the entry map is empty: the one job in the stream died
    with_ttl = 0
    for key in await keys_of(raw, coord):
        ttl = await raw.pttl(key)
        if key in no_ttl or key in queue:
            assert ttl == -1, f"{key} expires"
        else:
            assert ttl > 0, f"{key} has no TTL"
            with_ttl += 1
    # ended record, owner, inbox, slots, 2 worker keys, pending, session, 2 once-markers
    assert with_ttl == 10


async def test_index_expires_with_its_records(coord: RedisCoordinator, raw: Redis) -> None:
    call_id = "call_short"
    await coord.create_call(call_id, {"state": "created"}, ttl=5)
    doc, index = coord._doc_keys(call_id)
    assert 0 < await raw.pttl(index) <= 5000
    await coord.update_call(call_id, {"state": "active"})  # no ttl: live for good
    assert await raw.pttl(doc) == -1 and await raw.pttl(index) == -1
    await coord.update_call(call_id, {"state": "ended"}, ttl=5)
    assert not await raw.exists(index)  # empty: gone
    assert 0 < await raw.pttl(doc) <= 5000


async def test_owner_claim_renews_its_lease(redis_server: Server, raw: Redis) -> None:
    prefix = f"te-redis-{uuid.uuid4().hex[:12]}:"
    coord = RedisCoordinator.from_url(redis_server.url, key_prefix=prefix)
    try:
        assert await coord.claim_owner("c1", "w1", ttl=0.3)
        keys = [key async for key in raw.scan_iter(match=f"{prefix}*owner*")]
        assert len(keys) == 1 and 0 < await raw.pttl(keys[0]) <= 300  # the lease is the key's TTL
        await asyncio.sleep(0.2)
        assert await coord.claim_owner("c1", "w1", ttl=0.3)
        await asyncio.sleep(0.2)
        assert await coord.owner_of("c1") == "w1"
        await asyncio.sleep(0.3)
        assert await coord.owner_of("c1") is None  # the owner died: the claim lapses
    finally:
        await coord.close()


async def test_inbox_is_bounded(redis_server: Server, raw: Redis) -> None:
    prefix = f"te-redis-{uuid.uuid4().hex[:12]}:"
    coord = RedisCoordinator.from_url(redis_server.url, key_prefix=prefix, control_inbox_size=10)
    try:
        await coord.claim_owner("c1", "w1")
        for i in range(1000):
            await coord.publish_control("c1", {"seq": i})
        # MAXLEN ~: trimmed in whole stream nodes (100 entries), so about the bound
        assert await raw.xlen(coord._inbox_key("w1")) <= 10 + 100
        it = coord.control_messages("w1")
        first = await asyncio.wait_for(anext(it), 1)
        assert first[1]["seq"] > 800  # the oldest were dropped
        await it.aclose()
    finally:
        await coord.close()


# -- values and control delivery ---------------------------------------------------------------


async def test_control_entries_are_deleted_once_handed_out(
    coord: RedisCoordinator, raw: Redis
) -> None:
    await coord.claim_owner("c1", "w1")
    for i in range(3):
        await coord.publish_control("c1", {"seq": i})
    inbox = coord._inbox_key("w1")
    it = coord.control_messages("w1")
    assert await asyncio.wait_for(anext(it), 1) == ("c1", {"seq": 0})
    assert await raw.xlen(inbox) == 3  # deleted when the consumer comes back (or closes)
    assert await asyncio.wait_for(anext(it), 1) == ("c1", {"seq": 1})
    assert await raw.xlen(inbox) == 2
    await it.aclose()
    assert await raw.xlen(inbox) == 1


async def test_cancelled_consumer_stops_promptly_and_frees_its_connection(
    coord: RedisCoordinator,
) -> None:
    it = coord.control_messages("w-idle")
    reader = asyncio.ensure_future(anext(it))
    await asyncio.sleep(0.1)
    reader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reader
    loop = asyncio.get_running_loop()
    started = loop.time()
    await it.aclose()
    assert loop.time() - started < 0.5
    assert await coord.ping()


async def test_conflict_carries_current_document(coord: RedisCoordinator) -> None:
    await coord.create_call("c1", {"state": "created", "n": 1})
    with pytest.raises(Conflict) as info:
        await coord.update_call("c1", {"n": 2}, if_version=7)
    assert (info.value.current.version, info.value.current.data["n"]) == (1, 1)


async def test_two_workers_share_state(redis_server: Server, raw: Redis) -> None:
    """Two coordinators (two worker processes' view): A's writes are B's reads, control crosses."""
    prefix = f"te-redis-{uuid.uuid4().hex[:12]}:"
    a = RedisCoordinator.from_url(redis_server.url, key_prefix=prefix)
    b = RedisCoordinator.from_url(redis_server.url, key_prefix=prefix)
    inbox = b.control_messages("worker-b")
    try:
        await a.create_call("c1", {"state": "created"})
        assert await b.claim_owner("c1", "worker-b")
        assert not await a.claim_owner("c1", "worker-a")
        assert await a.publish_control("c1", {"action": "transfer", "to": "+15555550100"})
        assert await asyncio.wait_for(anext(inbox), 1) == (
            "c1",
            {"action": "transfer", "to": "+15555550100"},
        )
        assert await a.acquire_agent_slot("agent", "c1", limit=1)
        assert not await b.acquire_agent_slot("agent", "c2", limit=1)
        await b.update_call("c1", {"state": "ended"})
        assert await a.list_active_calls() == []
        assert await a.enqueue("webhooks", "c1", {}) and not await b.enqueue("webhooks", "c1", {})
    finally:
        await inbox.aclose()
        await a.close()
        await b.close()
        async for key in raw.scan_iter(match=f"{prefix}*"):
            await raw.unlink(key)


# -- outages -------------------------------------------------------------------------------------


async def eventually(check: Callable[[], Awaitable[Any]], within: float = 10.0) -> Any:
    """Retry ``check`` until it returns a truthy value without a Redis error."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        with contextlib.suppress(RedisError, OSError):
            result = await check()
            if result:
                return result
        assert loop.time() < deadline, "no success in time"
        await asyncio.sleep(0.1)


async def test_ping_false_while_redis_is_down_and_recovery() -> None:
    with redis_server() as server:
        coord = RedisCoordinator.from_url(server.url, key_prefix="te-outage:")
        inbox = coord.control_messages("w1")
        try:
            assert await coord.ping()
            assert await coord.claim_owner("c1", "w1")
            reader = asyncio.ensure_future(anext(inbox))
            server.kill()
            assert await coord.ping() is False
            with pytest.raises(RedisError):
                await coord.get_call("c1")
            server.start()  # same port, empty (no persistence): scripts must reload
            await eventually(coord.ping)
            assert await eventually(lambda: coord.claim_owner("c1", "w1"))
            # the consumer waited through the outage and carries on by itself
            assert await coord.publish_control("c1", {"action": "hangup"})
            assert await asyncio.wait_for(reader, 5) == ("c1", {"action": "hangup"})
            assert await coord.create_call("c2", {"state": "created"}) is not None
        finally:
            await inbox.aclose()
            await coord.close()
            await coord.close()  # idempotent
            assert await coord.ping() is False


async def test_ping_false_when_nothing_listens() -> None:
    from tests.conftest import free_port

    coord = RedisCoordinator.from_url(f"redis://127.0.0.1:{free_port()}/0")
    try:
        assert await coord.ping() is False
    finally:
        await coord.close()


# -- URLs and settings ---------------------------------------------------------------------------


def test_sentinel_url_forms() -> None:
    assert parse_sentinel_url("redis+sentinel://h1:26380,h2/edge") == SentinelTarget(
        sentinels=(("h1", 26380), ("h2", 26379)), service_name="edge"
    )
    target = parse_sentinel_url(
        "redis+sentinel://:s%40cret@10.0.0.1:1,[::1]:2/my-svc/3?sentinel_password=sp&ssl=true"
    )
    assert target.sentinels == (("10.0.0.1", 1), ("::1", 2))
    assert (target.service_name, target.db, target.password) == ("my-svc", 3, "s@cret")
    assert (target.username, target.sentinel_password, target.ssl) == (None, "sp", True)
    assert parse_sentinel_url("redis+sentinel://app:pw@h:1/s").username == "app"


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://h:6379", "must start with one of"),
        ("localhost:6379", "must start with one of"),
        ("redis://:6379/0", "has no host"),
        ("redis://h:99999/0", "out of range"),
        ("unix://", "socket path"),
        ("redis+sentinel://h1:1,h2:2", "service name"),
        ("redis+sentinel:///edge", "at least one sentinel"),
        ("redis+sentinel://h:x/edge", "bad port"),
        ("redis+sentinel://h/edge/zero", "not a number"),
        ("redis+sentinel://h/edge?timeout=1", "unknown"),
    ],
)
def test_bad_urls_are_refused_with_a_reason(url: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        check_redis_url(url)


def test_good_urls_pass() -> None:
    for url in (
        "redis://localhost:6379/0",
        "rediss://user:pw@redis.example.com:6380/1",
        "unix:///run/redis/redis.sock?db=2",
        "redis+sentinel://s1:26379,s2:26379,s3:26379/edge",
    ):
        assert check_redis_url(url) == url


def test_redaction_hides_the_password() -> None:
    assert redact_redis_url("redis://u:secret@h:1/0") == "redis://u:***@h:1/0"
    assert "secret" not in redact_redis_url("redis+sentinel://:secret@a:1,b:2/edge")


def test_settings_url_alone_selects_redis(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings(None).coordination.backend == "memory"
    monkeypatch.setenv("TELEPHONY_EDGE_COORDINATION__REDIS_URL", "redis://r:6379/0")
    settings = load_settings(None)
    assert settings.coordination.backend == "redis"
    assert settings.coordination.key_prefix == "te:"
    monkeypatch.setenv("TELEPHONY_EDGE_COORDINATION__REDIS_URL", "memcached://r")
    with pytest.raises(ConfigError, match=r"coordination\.redis_url"):
        load_settings(None)
    monkeypatch.setenv("TELEPHONY_EDGE_COORDINATION__REDIS_URL", "redis://r:6379/0")
    monkeypatch.setenv("TELEPHONY_EDGE_COORDINATION__KEY_PREFIX", "te{x}:")
    with pytest.raises(ConfigError, match=r"coordination\.key_prefix"):
        load_settings(None)


async def test_factory_picks_the_backend(redis_server: Server) -> None:
    memory = create_coordinator(load_settings(None).coordination)
    assert isinstance(memory, MemoryCoordinator) and not memory.shared
    settings = load_settings(
        None, coordination={"redis_url": redis_server.url, "key_prefix": "te-factory:"}
    )
    coord = create_coordinator(settings.coordination)
    try:
        assert isinstance(coord, RedisCoordinator) and coord.shared
        assert await coord.ping()
        assert coord._doc_keys("c")[0].startswith("te-factory:")
    finally:
        await coord.close()


# -- Sentinel --------------------------------------------------------------------------------------


async def test_sentinel_failover_keeps_the_state_and_serves_new_operations() -> None:
    with sentinel_topology("edge") as (primary, replica, sentinels):
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in sentinels)
        coord = RedisCoordinator.from_url(f"redis+sentinel://{hosts}/edge", key_prefix="te-sen:")
        try:
            assert await coord.create_call("c1", {"state": "active"}) is not None
            assert await coord.enqueue("webhooks", "c1", {"n": 1})
            # let the write reach the replica before the crash (Redis replicates async)
            async with Redis(port=primary.port) as direct:
                assert await direct.execute_command("WAIT", 1, 2000) == 1
            primary.kill()
            loop = asyncio.get_running_loop()
            started = loop.time()
            created = await eventually(
                lambda: coord.create_call(f"c-after-{uuid.uuid4().hex}", {"state": "created"}),
                within=10,
            )
            assert created is not None
            assert loop.time() - started < 10
            got = await coord.get_call("c1")
            assert got is not None and got.data == {"state": "active"}
            assert await coord.queue_length("webhooks") == 1
            async with Redis(port=replica.port, decode_responses=True) as promoted:
                assert (await promoted.info("replication"))["role"] == "master"
        finally:
            await coord.close()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("--maxmemory-policy", "allkeys-lru"), ["maxmemory-policy is allkeys-lru", "appendonly"]),
        (("--maxmemory-policy", "volatile-ttl", "--appendonly", "yes"), ["volatile-ttl"]),
        (("--appendonly", "yes"), []),
    ],
)
async def test_a_redis_that_can_lose_state_is_named_at_start(
    args: tuple[str, ...], expected: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    """Eviction and a primary without AOF, read from INFO (managed Redis refuses CONFIG)."""
    from telephony_edge.calls.service import CallService  # the worker that logs it

    with redis_server(*args) as server:
        coordinator = RedisCoordinator.from_url(server.url, key_prefix=f"dur{uuid.uuid4().hex}:")
        try:
            warnings = await coordinator.durability_warnings()
            assert len(warnings) == len(expected), warnings
            for warning, phrase in zip(warnings, expected, strict=True):
                assert phrase in warning
            service = CallService.__new__(CallService)  # only what _check_store touches
            service.coordinator, service._store_checked = coordinator, False
            with caplog.at_level("WARNING", logger="telephony_edge.calls.upkeep"):
                await service._check_store()
                await service._check_store()  # once only
        finally:
            await coordinator.close()
    logged = [r.getMessage() for r in caplog.records if "coordination store" in r.getMessage()]
    assert logged == [f"coordination store: {w}" for w in warnings]


# -- paging the index ------------------------------------------------------------------------


async def record_reads(raw: Redis) -> int:
    stats = await raw.info("commandstats")
    return sum(int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in ("hgetall", "hmget"))


async def test_a_page_of_the_index_reads_only_its_records(
    coord: RedisCoordinator, raw: Redis
) -> None:
    """``GET /calls`` and ``/status`` read a page's records, not the whole index per page."""
    ids = sorted(f"call_{uuid.uuid4().hex}" for _ in range(400))
    for call_id in ids:
        await coord.create_call(call_id, {"state": "active", "call_id": call_id, "owner": "w1"})
    await coord.page_active_calls(limit=1)  # scripts loaded
    before = await record_reads(raw)
    page, cursor = await coord.page_active_calls(limit=10)
    assert [c for c, _ in page] == ids[:10] and cursor == ids[9]
    assert await record_reads(raw) - before <= 11  # the page and one to know there is more
    before = await record_reads(raw)
    page, cursor = await coord.page_active_calls(after=ids[-3], limit=10, fields=["owner"])
    assert [c for c, _ in page] == ids[-2:] and cursor is None
    assert page[0][1].data == {"call_id": ids[-2], "owner": "w1"}
    assert await record_reads(raw) - before <= 2


async def test_an_index_scored_by_creation_time_is_paged_by_id_all_the_same(
    coord: RedisCoordinator, raw: Redis
) -> None:
    """Indexes written before paging by id (scored by creation time) are re-scored once."""
    ids = sorted(f"call_{uuid.uuid4().hex}" for _ in range(50))
    for i, call_id in enumerate(ids[::-1]):
        await coord.create_call(call_id, {"state": "active", "call_id": call_id})
        await raw.zadd(coord._doc_keys(call_id)[1], {call_id: 1_700_000_000_000 + i})
    seen: list[str] = []
    cursor = None
    while True:
        page, cursor = await coord.page_active_calls(after=cursor, limit=7)
        seen += [c for c, _ in page]
        if cursor is None:
            break
    assert seen == ids
