"""RFC 3263 lookups (sip/resolve.py) and the sender that waits for them (sip/outbound.py),
against a real DNS server on 127.0.0.1 (tests/sip/dns_server.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from pydantic import ValidationError

from telephony_edge.sip.outbound import Outbound
from telephony_edge.sip.resolve import (
    DnsCache,
    HostsFile,
    SipResolver,
    Target,
    Unresolvable,
    nameserver_address,
    target_of,
)
from telephony_edge.sip.settings import SipSettings
from tests.conftest import wait_for
from tests.sip.dns_server import start_dns

ZONE = {
    ("_sip._udp.pbx.test", "SRV"): ["20 0 5090 backup.pbx.test.", "10 0 5080 gone.pbx.test."],
    ("_sip._udp.dead.test", "SRV"): ["10 0 5060 gone.pbx.test."],
    ("backup.pbx.test", "A"): ["127.0.0.5"],
    ("gone.pbx.test", "TXT"): ['"no address"'],
    ("proxy.test", "A"): ["127.0.0.7"],
}


def resolver_for(address: str, tmp_path: Path, timeout: float = 2.0) -> SipResolver:
    hosts = tmp_path / "hosts"
    if not hosts.exists():
        hosts.write_text("127.0.0.1 localhost\n127.0.0.9 pinned.test  # the operator's\n")
    return SipResolver([address], timeout, hosts=HostsFile(str(hosts)))


def test_target_of_reads_the_uri_as_rfc_3263_does() -> None:
    assert target_of("sip:edge.example.com;lr", "UDP") == Target(
        "edge.example.com", None, "UDP", False
    )
    assert target_of("sip:alice@PBX.test:5070", "udp") == Target("pbx.test", 5070, "UDP", False)
    assert target_of("sips:x@h.test;maddr=10.0.0.1", "TCP").host == "10.0.0.1"
    assert target_of("sip:[2001:db8::1]:5062", "UDP").host == "2001:db8::1"
    assert Target("h.test", None, "TCP", True).srv_name == "_sips._tcp.h.test"
    # a sip: URI over TLS is looked up as a sips: one (RFC 3263 §4.1), port 5061
    tls = target_of("sip:sbc.test;transport=tls", "TLS")
    assert tls == Target("sbc.test", None, "TLS", False)
    assert (tls.srv_name, tls.naptr_service, tls.default_port) == (
        "_sips._tcp.sbc.test",
        "SIPS+D2T",
        5061,
    )
    with pytest.raises(ValueError):
        target_of("tel:+15550100", "UDP")


def test_cache_keeps_answers_for_their_ttl_and_failures_for_the_negative_ttl() -> None:
    cache = DnsCache(negative_ttl=30, max_entries=2)
    a, b, c = (Target(h, None, "UDP", False) for h in ("a.test", "b.test", "c.test"))
    cache.put(a, ("127.0.0.1", 5060), 10, now=100)
    assert cache.get(a, 109.9) == ("127.0.0.1", 5060)
    assert cache.get(a, 110.0) is None
    cache.put(b, Unresolvable("NXDOMAIN"), 3600, now=100)  # a failure keeps 30 s, not 3600
    assert isinstance(cache.get(b, 129), Unresolvable)
    assert cache.get(b, 130) is None
    cache.put(a, ("127.0.0.1", 5060), 10, now=200)
    cache.put(b, ("127.0.0.2", 5060), 10, now=200)
    cache.put(c, ("127.0.0.3", 5060), 10, now=200)  # bounded: the oldest goes
    assert cache.get(a, 201) is None and cache.get(c, 201) == ("127.0.0.3", 5060)


async def test_srv_then_a_with_the_smallest_ttl_and_an_explicit_port_asks_no_srv(
    tmp_path: Path,
) -> None:
    server = await start_dns(ZONE, ttl=120)
    resolver = resolver_for(server.address, tmp_path)
    # priority 10 has no address: the next one (RFC 2782 order), at its SRV port
    assert await resolver.lookup(target_of("sip:pbx.test;lr", "UDP")) == (
        ("127.0.0.5", 5090),
        120.0,
    )
    server.queries.clear()
    address, _ = await resolver.lookup(target_of("sip:proxy.test:5072;lr", "UDP"))
    assert address == ("127.0.0.7", 5072)
    assert server.queries == [("proxy.test", "A")]
    server.queries.clear()
    address, _ = await resolver.lookup(target_of("sip:proxy.test", "UDP"))  # no SRV: A, 5060
    assert address == ("127.0.0.7", 5060)
    assert server.queries == [
        ("proxy.test", "NAPTR"),
        ("_sip._udp.proxy.test", "SRV"),
        ("proxy.test", "A"),
    ]
    server.close()


async def test_lookup_all_lists_every_address_in_rfc_3263_order(tmp_path: Path) -> None:
    zone = {
        ("_sip._udp.carrier.test", "SRV"): [
            "20 0 5090 c.carrier.test.",
            "10 5 5080 a.carrier.test.",
            "10 50 5081 b.carrier.test.",
            "15 0 5085 gone.carrier.test.",
        ],
        ("a.carrier.test", "A"): ["127.0.0.11", "127.0.0.12"],
        ("b.carrier.test", "A"): ["127.0.0.13"],
        ("c.carrier.test", "A"): ["127.0.0.14"],
        ("proxy.test", "A"): ["127.0.0.7", "127.0.0.8"],
    }
    server = await start_dns(zone)
    resolver = resolver_for(server.address, tmp_path)
    # priority, then the heaviest; each target's addresses (an RRset has no order); a
    # target without one skipped
    found = await resolver.lookup_all(target_of("sip:carrier.test", "UDP"))
    assert found[0] == ("127.0.0.13", 5081) and found[3] == ("127.0.0.14", 5090)
    assert set(found[1:3]) == {("127.0.0.11", 5080), ("127.0.0.12", 5080)}
    found = await resolver.lookup_all(target_of("sip:proxy.test:5070", "UDP"))
    assert sorted(found) == [("127.0.0.7", 5070), ("127.0.0.8", 5070)]
    assert await resolver.lookup_all(target_of("sip:127.0.0.3", "UDP")) == [("127.0.0.3", 5060)]
    with pytest.raises(Unresolvable):
        await resolver.lookup_all(target_of("sip:nowhere.test", "UDP"))
    server.close()


async def test_naptr_names_the_srv_for_the_dialogs_transport(tmp_path: Path) -> None:
    zone = {
        ("carrier.test", "NAPTR"): [
            '20 10 "s" "SIP+D2U" "" _sip._udp.sbc.carrier.test.',
            '10 10 "s" "SIP+D2T" "" _sip._tcp.sbc.carrier.test.',
            '5 10 "u" "E2U+sip" "!^.*$!sip:x@carrier.test!" .',
        ],
        ("_sip._udp.sbc.carrier.test", "SRV"): ["10 0 5070 a.carrier.test."],
        ("_sip._tcp.sbc.carrier.test", "SRV"): ["10 0 5071 a.carrier.test."],
        ("a.carrier.test", "A"): ["127.0.0.8"],
        ("_sip._udp.plain.test", "SRV"): ["10 0 5072 a.carrier.test."],
    }
    server = await start_dns(zone)
    resolver = resolver_for(server.address, tmp_path)
    assert (await resolver.lookup(target_of("sip:carrier.test", "UDP")))[0] == ("127.0.0.8", 5070)
    assert (await resolver.lookup(target_of("sip:carrier.test", "TCP")))[0] == ("127.0.0.8", 5071)
    # no NAPTR: the usual SRV name
    assert (await resolver.lookup(target_of("sip:plain.test", "UDP")))[0] == ("127.0.0.8", 5072)
    assert ("plain.test", "NAPTR") in server.queries
    server.close()


async def test_the_hosts_file_comes_first_and_a_missing_name_is_unresolvable(
    tmp_path: Path,
) -> None:
    server = await start_dns(ZONE)
    resolver = resolver_for(server.address, tmp_path)
    assert (await resolver.lookup(target_of("sip:localhost:5999", "UDP")))[0] == (
        "127.0.0.1",
        5999,
    )
    assert (await resolver.lookup(target_of("sip:pinned.test", "UDP")))[0] == ("127.0.0.9", 5060)
    assert server.queries == []  # neither asked DNS, not even for SRV
    with pytest.raises(Unresolvable, match=r"nowhere\.test has no A record"):
        await resolver.lookup(target_of("sip:nowhere.test;lr", "UDP"))
    with pytest.raises(Unresolvable, match="no SRV target"):
        await resolver.lookup(target_of("sip:dead.test", "UDP"))  # SRV, but no address
    server.close()


async def test_a_silent_nameserver_fails_the_lookup_at_the_timeout(tmp_path: Path) -> None:
    server = await start_dns(ZONE)
    server.silent = True
    resolver = resolver_for(server.address, tmp_path, timeout=0.5)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(Unresolvable):
        await resolver.lookup(target_of("sip:proxy.test:5060", "UDP"))
    assert 0.4 < loop.time() - started < 1.5
    server.close()


async def test_outbound_waits_for_one_lookup_per_name_then_uses_the_cache(
    tmp_path: Path,
) -> None:
    server = await start_dns(ZONE, ttl=60, delay=0.2)
    sent: list[tuple[bytes, tuple[str, int], str]] = []
    named: list[tuple[str | None, str | None]] = []  # (TLS server name, call) of each send
    failed: list[tuple[str, str]] = []

    def send_now(
        data: bytes, dest: tuple[str, int], transport: str, name: str | None, call: str | None
    ) -> None:
        sent.append((data, dest, transport))
        named.append((name, call))

    outbound = Outbound(
        resolver_for(server.address, tmp_path),
        send_now,
        lambda call, reason: failed.append((call, reason)),
    )
    uri = "sip:proxy.test:5072;lr"
    outbound.send(b"one", ("proxy.test", 5072), "UDP", uri, "call-a")
    outbound.send(b"two", ("proxy.test", 5072), "UDP", uri, "call-b")
    outbound.send(b"now", ("127.0.0.1", 5060), "UDP", None, "call-c")  # an address: at once
    assert sent == [(b"now", ("127.0.0.1", 5060), "UDP")]
    await wait_for(lambda: len(sent) == 3, within=3)
    assert sent[1:] == [(b"one", ("127.0.0.7", 5072), "UDP"), (b"two", ("127.0.0.7", 5072), "UDP")]
    outbound.send(b"three", ("proxy.test", 5072), "UDP", uri, "call-a")
    assert sent[-1] == (b"three", ("127.0.0.7", 5072), "UDP")  # cached: no wait
    # an address goes as the UA named it; a URI's sends name its host (RFC 5922)
    assert named == [(None, "call-c"), *[("proxy.test", c) for c in ("call-a", "call-b", "call-a")]]
    assert server.queries == [("proxy.test", "A")]
    outbound.send(b"x", ("nowhere.test", 5060), "UDP", "sip:nowhere.test;lr", "call-a")
    outbound.send(b"y", ("nowhere.test", 5060), "UDP", "sip:nowhere.test;lr", "call-a")
    await wait_for(lambda: failed, within=3)
    await asyncio.sleep(0.1)
    assert failed == [("call-a", "nowhere.test has no A record")]  # once per call
    outbound.send(b"z", ("nowhere.test", 5060), "UDP", "sip:nowhere.test;lr", "call-d")
    assert failed[-1][0] == "call-d"  # the failure is cached: told at once
    assert len(sent) == 4
    await outbound.close()
    server.close()


def test_nameservers_are_addresses_checked_at_start_up() -> None:
    assert nameserver_address("10.0.0.2") == ("10.0.0.2", 53)
    assert nameserver_address("127.0.0.1:5353") == ("127.0.0.1", 5353)
    assert nameserver_address("2001:db8::53") == ("2001:db8::53", 53)
    assert nameserver_address("[2001:db8::53]:5353") == ("2001:db8::53", 5353)
    for bad in ("dns.example.com", "127.0.0.1:0", "127.0.0.1:99999", ""):
        with pytest.raises(ValueError):
            nameserver_address(bad)
    with pytest.raises(ValidationError, match="a nameserver is an IP address"):
        SipSettings(dns_servers=["dns.example.com"])
