"""ICE only to addresses the operator allows (:mod:`telephony_edge.webrtc.candidates`).

The socket tests run a real aiortc caller against the edge on 127.0.0.1 and
``::1``. Every datagram aioice sends (the edge's and the caller's) passes a
recorder patched onto aioice's ``StunProtocol``; what is not for loopback is
recorded and dropped, never sent, so nothing leaves the machine whatever the
edge does.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from aioice import stun
from aioice.ice import StunProtocol
from aiortc import RTCSessionDescription

from telephony_edge import metrics
from telephony_edge.config_loading import load_settings
from telephony_edge.webrtc.candidates import PeerPolicy, filter_offer, host_networks
from tests.conftest import Edge, Receiver, wait_for
from tests.webrtc.test_offer import API_KEY, Client, post_offer

REFUSED = {
    "10.0.0.5": "private",
    "192.168.1.7": "private",
    "172.16.3.4": "private",
    "169.254.10.20": "link-local",
    "169.254.169.254": "cloud-metadata",
    "100.64.0.9": "reserved",
    "224.0.0.251": "multicast",
    "255.255.255.255": "broadcast",
    "fd00:ec2::254": "cloud-metadata",
    "fc00::7": "private",
    "fe80::1": "link-local",
    "::ffff:169.254.169.254": "cloud-metadata",
    "64:ff9b::a9fe:a9fe": "cloud-metadata",
}


def bad_input() -> float:
    value: float = metrics.BAD_INPUT.labels(source="webrtc")._value.get()
    return value


def _loopback(host: str) -> bool:
    return ipaddress.ip_address(host).is_loopback


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Destinations of every STUN and data datagram aioice sends; off loopback: dropped."""
    destinations: list[str] = []
    send_stun, send_data = StunProtocol.send_stun, StunProtocol.send_data

    def record_stun(self: StunProtocol, message: stun.Message, addr: tuple[str, int]) -> None:
        destinations.append(addr[0])
        if _loopback(addr[0]):
            send_stun(self, message, addr)

    async def record_data(self: StunProtocol, data: bytes, addr: tuple[str, int]) -> None:
        destinations.append(addr[0])
        if _loopback(addr[0]):
            await send_data(self, data, addr)

    monkeypatch.setattr(StunProtocol, "send_stun", record_stun)
    monkeypatch.setattr(StunProtocol, "send_data", record_data)
    yield destinations


def settings(receiver: Receiver, allowed: list[str], addresses: list[str]) -> Any:
    return load_settings(
        None,
        api={"private_key": API_KEY},
        webhooks={"signing_secret": "whsec_webrtc_tests_01", "allow_private_targets": True},
        webrtc={
            "enabled": True,
            "advertised_addresses": addresses,
            "allowed_peer_networks": allowed,
            "connect_timeout_s": 10,
        },
        agents={"echo": {"prompt": "You echo.", "session_data_webhook": receiver.url}},
    )


def with_candidates(sdp: str, hosts: list[str]) -> str:
    """``sdp`` with a host candidate per address, at top priority, before its own."""
    lines = sdp.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("a=candidate:"))
    extra = [
        f"a=candidate:x{n} 1 udp 2130706431 {host} {40000 + n} typ host"
        for n, host in enumerate(hosts)
    ]
    return "\r\n".join(lines[:at] + extra + lines[at:]) + "\r\n"


def test_the_policy_refuses_by_kind_and_the_allow_list_opens_only_what_it_may() -> None:
    policy = PeerPolicy()
    for host, kind in REFUSED.items():
        assert policy.refusal(host) == kind, host
    assert policy.refusal("127.0.0.1") == "loopback" and policy.refusal("::1") == "loopback"
    assert policy.refusal("0.0.0.0") == "unspecified" and policy.refusal("::") == "unspecified"
    assert policy.refusal("d3b9a4f6-1c2e.local") == "mdns"
    assert policy.refusal("metadata.google.internal") == "not-an-address"
    assert policy.refusal("8.8.8.8") is None and policy.refusal("2001:4860:4860::8888") is None
    lan = PeerPolicy.from_cidrs(["127.0.0.0/8", "10.0.0.0/8", "169.254.0.0/16", "::/0"])
    assert lan.refusal("127.0.0.1") is None and lan.refusal("10.0.0.5") is None
    assert lan.refusal("169.254.10.20") is None and lan.refusal("fe80::1") is None
    # no allow-list opens the metadata service, multicast or broadcast
    assert lan.refusal("169.254.169.254") == "cloud-metadata"
    assert lan.refusal("fd00:ec2::254") == "cloud-metadata"
    assert lan.refusal("224.0.0.251") == "multicast"
    assert PeerPolicy.from_cidrs(["0.0.0.0/0"]).refusal("255.255.255.255") == "broadcast"


def test_allowing_loopback_allows_this_hosts_own_addresses_and_nothing_more() -> None:
    own = [str(n.network_address) for n in host_networks()]
    loopback = PeerPolicy.from_cidrs(["127.0.0.0/8"])
    for host in own:
        assert loopback.refusal(host) is None, host
        if PeerPolicy().refusal(host) is not None:  # a private address of this host
            assert PeerPolicy.from_cidrs(["8.8.8.0/24"]).refusal(host) is not None
    assert loopback.refusal("10.255.255.254") == "private" or "10.255.255.254" in own


def test_the_offer_loses_refused_candidates_and_keeps_the_rest() -> None:
    sdp = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n" + "".join(
        f"a=candidate:{n} 1 udp 100 {host} 5000 typ host\r\n"
        for n, host in enumerate(["8.8.8.8", "10.1.2.3", "x.local", "169.254.169.254"])
    )
    kept, refused = filter_offer(sdp, PeerPolicy())
    assert "8.8.8.8" in kept and "10.1.2.3" not in kept and "x.local" not in kept
    assert [(r.host, r.kind) for r in refused] == [
        ("10.1.2.3", "private"),
        ("a name", "mdns"),
        ("169.254.169.254", "cloud-metadata"),
    ]


async def test_an_offer_naming_private_link_local_and_metadata_addresses_gets_no_stun_there(
    make_edge: Callable[..., Any], receiver: Receiver, sent: list[str]
) -> None:
    # the edge listens on both loopbacks, so IPv6 candidates pair too
    edge: Edge = await make_edge(
        settings(receiver, ["127.0.0.0/8", "::1/128"], ["127.0.0.1", "::1"])
    )
    client = Client()
    before = bad_input()
    try:
        offer = await client.offer()
        offer["sdp"] = with_candidates(offer["sdp"], list(REFUSED))
        status, answer = await post_offer(edge, {"agent_id": "echo", "offer": offer})
        assert status == 200, answer
        await client.pc.setRemoteDescription(
            RTCSessionDescription(sdp=answer["sdp"], type="answer")
        )
        await wait_for(lambda: client.pc.connectionState == "connected", within=10)
        await asyncio.sleep(1.5)  # the edge's check list has had every pair's turn
    finally:
        await client.close()
    assert sent, "the recorder saw the ICE traffic"
    leaked = sorted({host for host in sent if host not in ("127.0.0.1", "::1")})
    assert leaked == [], f"STUN or media sent to refused addresses: {leaked}"
    assert bad_input() - before == len(REFUSED)


async def test_a_check_from_a_refused_source_gets_no_answer_and_no_check_back(
    make_edge: Callable[..., Any], receiver: Receiver, sent: list[str]
) -> None:
    """A peer-reflexive source is judged too: 127.0.0.2 is not in the allow-list."""
    edge: Edge = await make_edge(settings(receiver, ["127.0.0.1/32"], ["127.0.0.1"]))
    client = Client()
    stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    stranger.bind(("127.0.0.2", 0))
    stranger.setblocking(False)
    before = bad_input()
    try:
        offer = await client.offer()
        status, answer = await post_offer(edge, {"agent_id": "echo", "offer": offer})
        assert status == 200, answer
        edge_ufrag, edge_pwd, port = _ice(answer["sdp"])
        client_ufrag = _ice(offer["sdp"])[0]
        request = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
        request.attributes["USERNAME"] = f"{edge_ufrag}:{client_ufrag}"
        request.attributes["PRIORITY"] = 1853824767
        request.attributes["ICE-CONTROLLING"] = 1
        request.add_message_integrity(edge_pwd.encode())
        for _ in range(3):
            stranger.sendto(bytes(request), ("127.0.0.1", port))
            await asyncio.sleep(0.2)
        await asyncio.sleep(1.0)
        with pytest.raises(BlockingIOError):
            stranger.recvfrom(2048)  # no response, no triggered check
        assert "127.0.0.2" not in sent
        assert bad_input() - before >= 1
        # the caller itself still connects
        await client.pc.setRemoteDescription(
            RTCSessionDescription(sdp=answer["sdp"], type="answer")
        )
        await wait_for(lambda: client.pc.connectionState == "connected", within=10)
    finally:
        stranger.close()
        await client.close()


def _ice(sdp: str) -> tuple[str, str, int]:
    """ufrag, password and the first candidate's port of an SDP."""
    lines = sdp.splitlines()
    ufrag = next(x.split(":", 1)[1] for x in lines if x.startswith("a=ice-ufrag:"))
    pwd = next(x.split(":", 1)[1] for x in lines if x.startswith("a=ice-pwd:"))
    port = next(int(x.split()[5]) for x in lines if x.startswith("a=candidate:"))
    return ufrag, pwd, port
