"""Floods of any method from one source: limited per source, a genuine call still answered."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from telephony_edge import badinput, metrics
from telephony_edge.sip.message import Response
from telephony_edge.sip.parse import parse_message
from telephony_edge.sip.provider import SIP_ENDPOINT
from telephony_edge.sip.ratelimit import RequestGate, TokenBuckets, peek_method
from telephony_edge.sip.sources import source_key
from tests.conftest import Edge, Receiver
from tests.sip import wire
from tests.sip.conftest import finished, register, sip_test_settings, sipp, sipp_binary

ROOT = Path(__file__).resolve().parents[2]


def test_bucket_refills_at_its_rate_and_forgets_the_least_recent_source() -> None:
    buckets = TokenBuckets(rate=10.0, burst=3, max_keys=2)
    assert [buckets.take("a", 0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("a", 0.0) == pytest.approx(0.1)  # empty: a token in 1/rate
    assert buckets.take("a", 0.1) == 0.0
    buckets.take("b", 0.1)
    buckets.take("c", 0.1)  # the table holds two: "a" (least recent) is forgotten
    assert len(buckets) == 2 and buckets.take("a", 0.1) == 0.0  # a full bucket again


def test_gate_limits_requests_of_every_method_and_responses_but_never_keepalives() -> None:
    gate = RequestGate(rate=1.0, burst=2)
    for _ in range(5):
        assert gate.check(b"\r\n\r\n", "192.0.2.1", "UDP", 0.0) is None
    register = wire.request("REGISTER")
    assert gate.check(register, "192.0.2.1", "UDP", 0.0) is None
    assert gate.check(wire.request("OPTIONS"), "192.0.2.1", "UDP", 0.0) is None
    limited = gate.check(wire.request("BYE", to_tag="x"), "192.0.2.1", "UDP", 0.0)
    assert limited is not None and limited.method == "BYE" and limited.answer is None
    assert gate.check(register, "192.0.2.2", "UDP", 0.0) is None  # another source
    assert peek_method(b"FOO sip:x SIP/2.0\r\n\r\n") == "other"  # a bounded metric label
    response = b"SIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n"
    assert gate.check(response, "192.0.2.3", "TCP", 0.0) is None
    assert gate.check(response, "192.0.2.3", "TCP", 0.0) is None
    made_up = gate.check(response, "192.0.2.3", "TCP", 0.0)  # a flood of made-up answers
    assert made_up is not None and made_up.method == "response" and made_up.answer is None


def test_over_the_limit_on_tcp_is_a_stateless_503_with_retry_after() -> None:
    gate = RequestGate(rate=0.5, burst=1)
    assert gate.check(wire.request("OPTIONS"), "192.0.2.1", "TCP", 0.0) is None
    limited = gate.check(wire.request("OPTIONS"), "192.0.2.1", "TCP", 0.0)
    assert limited is not None and limited.answer is not None
    answer = parse_message(limited.answer)
    assert isinstance(answer, Response) and answer.status == 503
    assert answer.headers.get("Retry-After") == "2" and answer.headers.get("Call-ID")
    ack = gate.check(wire.request("ACK", to_tag="t"), "192.0.2.1", "TCP", 0.0)
    assert ack is not None and ack.answer is None  # an ACK is never answered
    garbage = gate.check(b"OPTIONS nonsense\r\n\r\n", "192.0.2.1", "TCP", 0.0)
    assert garbage is not None and garbage.answer is None


RATE, BURST, FLOOD_RATE, FLOOD_SECONDS = 100, 100, 1000, 4.0


def limited_total(method: str) -> float:
    return metrics.SIP_RATE_LIMITED.labels(method=method, transport="udp")._value.get()


@pytest.mark.parametrize("method", ["OPTIONS", "REGISTER"])
async def test_a_flood_from_one_source_is_limited_and_a_call_from_another_is_answered(
    make_edge: Callable[..., Any], receiver: Receiver, tmp_path: Path, method: str
) -> None:
    """Issue 19: OPTIONS or REGISTER at 1000/s from 127.0.0.1; sipp's call from 127.0.0.2
    (another source) during the flood is answered and completes, and the flood gets at
    most its share (burst + rate per second), the rest dropped and counted."""
    sipp_binary()
    limits = {"request_rate_per_s": RATE, "request_burst": BURST}
    edge: Edge = await make_edge(sip_test_settings(receiver, limits))
    reg = await register(edge)
    before = limited_total(method)
    endpoint = edge.app[SIP_ENDPOINT]
    flooder = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.sip.flood", f"127.0.0.1:{endpoint.port}",
        "--method", method, "--rate", str(FLOOD_RATE), "--seconds", str(FLOOD_SECONDS),
        cwd=ROOT, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    await asyncio.sleep(1.0)  # the flood is on
    call = await sipp(
        edge, "uac_pcma_pcap.xml", reg["call_id"], tmp_path, "-d", "1000", host="127.0.0.2"
    )
    await finished(call, tmp_path)  # INVITE answered 200, media, BYE: a whole call
    out, _ = await asyncio.wait_for(flooder.communicate(), FLOOD_SECONDS + 10)
    result = json.loads(out)
    share = BURST + RATE * (result["seconds"] + 1.0)
    assert result["sent"] == FLOOD_RATE * FLOOD_SECONDS
    assert 0 < result["answered"] <= share, result
    assert limited_total(method) - before >= result["sent"] - share


async def test_over_the_limit_on_a_tcp_connection_is_503_and_warned_once(
    make_edge: Callable[..., Any],
    receiver: Receiver,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Over TCP the source is proven and nothing is retransmitted: the request past the
    burst gets 503 with Retry-After on its connection; the sender is warned once (the
    warnings are per sender and interval), every refusal counted."""
    monkeypatch.setattr(badinput, "LIMITER", badinput.RateLimiter())  # no earlier test's
    limits = {"request_rate_per_s": 0.5, "request_burst": 3}
    edge: Edge = await make_edge(sip_test_settings(receiver, limits))
    reader, writer = await asyncio.open_connection("127.0.0.1", edge.app[SIP_ENDPOINT].port)
    before = metrics.SIP_RATE_LIMITED.labels(method="OPTIONS", transport="tcp")._value.get()
    with caplog.at_level(logging.WARNING):
        for n in range(6):
            writer.write(wire.request("OPTIONS", branch=f"z9hG4bKtcp{n}", cseq=n + 1))
        statuses = []
        for _ in range(6):
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)
            answer = parse_message(head)
            assert isinstance(answer, Response)
            statuses.append(answer.status)
            if answer.status == 503:
                assert answer.headers.get("Retry-After") == "2"
    assert statuses == [200, 200, 200, 503, 503, 503]
    after = metrics.SIP_RATE_LIMITED.labels(method="OPTIONS", transport="tcp")._value.get()
    assert after - before == 3
    warned = [r for r in caplog.records if "over the source's request rate" in r.getMessage()]
    assert len(warned) == 1 and "127.0.0.1" in warned[0].getMessage()
    writer.close()


def test_an_ipv6_64_is_one_source_and_an_ipv4_mapped_address_its_ipv4() -> None:
    """Whoever holds a /64 has 2**64 addresses to rotate through: one bucket for all."""
    assert source_key("192.0.2.1") == "192.0.2.1"
    assert (
        source_key("2001:db8:1:2::1") == source_key("2001:db8:1:2:ffff::9") == ("2001:db8:1:2::/64")
    )
    assert source_key("2001:db8:1:3::1") != source_key("2001:db8:1:2::1")
    assert source_key("::ffff:192.0.2.1") == "192.0.2.1"
    gate = RequestGate(rate=1.0, burst=2)
    for n in range(2):
        assert gate.check(wire.request("OPTIONS"), f"2001:db8::{n + 1}", "UDP", 0.0) is None
    assert gate.check(wire.request("OPTIONS"), "2001:db8::ffff", "UDP", 0.0) is not None


def test_trusted_sources_have_buckets_of_their_own_at_their_rate() -> None:
    asked: list[str] = []

    def trunk(address: str) -> bool:
        asked.append(address)
        return address.startswith("10.")

    gate = RequestGate(rate=1.0, burst=1, trusted=trunk, trusted_rate=100.0, trusted_burst=50)
    options = wire.request("OPTIONS")
    assert all(gate.check(options, "10.0.0.5", "UDP", 0.0) is None for _ in range(50))
    assert gate.check(options, "10.0.0.5", "UDP", 0.0) is not None
    assert gate.check(options, "192.0.2.1", "UDP", 0.0) is None
    assert gate.check(options, "192.0.2.1", "UDP", 0.0) is not None
    assert asked == ["10.0.0.5", "192.0.2.1"]  # decided once per source


@pytest.mark.parametrize(("source", "trusted"), [("127.0.0.1", True), ("127.0.0.9", False)])
async def test_a_trunk_sends_past_the_strangers_rate(
    make_edge: Callable[..., Any], receiver: Receiver, source: str, trusted: bool
) -> None:
    """A trunk's address (or a proxy's in front of the edge: everyone's traffic from one
    address) gets sip.trunk_request_rate_per_s; a stranger the ordinary rate."""
    sip = {
        "request_rate_per_s": 50,
        "request_burst": 100,
        "trunk_request_rate_per_s": 1000,
        "trunk_request_burst": 2000,
        "trunks": {"proxy": {"cidrs": ["127.0.0.1/32"]}},
    }
    edge: Edge = await make_edge(sip_test_settings(receiver, sip))
    port = edge.app[SIP_ENDPOINT].port
    flooder = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.sip.flood", f"127.0.0.1:{port}",
        "--rate", "1000", "--seconds", "0.6", "--source", source,
        cwd=ROOT, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(flooder.communicate(), 15)
    result = json.loads(out)
    if trusted:
        assert result["answered"] == result["sent"] == 600
    else:
        assert result["answered"] <= 100 + 50 * (result["seconds"] + 1.0)


async def test_the_open_transactions_are_a_gauge(
    make_edge: Callable[..., Any], receiver: Receiver
) -> None:
    """How close the table is to sip.max_transactions, for the operator's dashboard."""
    edge: Edge = await make_edge(sip_test_settings(receiver))
    port = edge.app[SIP_ENDPOINT].port
    flooder = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.sip.flood", f"127.0.0.1:{port}",
        "--rate", "0", "--count", "30", "--source", "127.0.0.1",
        cwd=ROOT, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(flooder.communicate(), 15)
    assert json.loads(out)["answered"] == 30
    assert metrics.SIP_TRANSACTIONS_OPEN._value.get() == 30  # each in Timer J (32 s)
