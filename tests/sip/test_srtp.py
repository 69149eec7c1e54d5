"""SRTP and SRTCP of a call (sip/srtp.py): both suites, forged and replayed packets, MKI,
key lifetime, rekeying, and the RTP sockets that protect whatever goes through them."""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest

from telephony_edge import metrics
from telephony_edge.sip.rtcp import build_bye
from telephony_edge.sip.rtp import Address
from telephony_edge.sip.rtp_socket import RtcpProtocol, RtpProtocol
from telephony_edge.sip.sdes import MasterKey, SrtpTerms
from telephony_edge.sip.srtp import SrtpSession

SUITES = ["AES_CM_128_HMAC_SHA1_80", "AES_CM_128_HMAC_SHA1_32"]
EDGE_KEY = MasterKey(bytes(range(30)))
PEER_KEY = MasterKey(bytes(range(100, 130)))


def pair(suite: str, peer_key: MasterKey = PEER_KEY) -> tuple[SrtpSession, SrtpSession]:
    """The edge's session and the peer's mirror image."""
    edge = SrtpSession(SrtpTerms(1, suite, EDGE_KEY, peer_key))
    peer = SrtpSession(SrtpTerms(1, suite, peer_key, EDGE_KEY))
    return edge, peer


def sealed(packet: bytes | None) -> bytes:
    assert packet is not None, "libsrtp refused to protect it"
    return packet


def rr(ssrc: int) -> bytes:
    """An empty RTCP receiver report, the shortest valid compound packet."""
    return struct.pack("!BBHI", 0x80, 201, 1, ssrc)


def rtp(seq: int, payload: bytes = b"\xd5" * 160, ssrc: int = 0x1234) -> bytes:
    return struct.pack("!BBHII", 0x80, 8, seq, seq * 160, ssrc) + payload


def dropped(reason: str, protocol: str = "rtp") -> float:
    value = metrics.SIP_SRTP_DROPPED.labels(protocol=protocol, reason=reason)._value.get()
    return float(value)


@pytest.mark.parametrize(("suite", "tag"), [(SUITES[0], 10), (SUITES[1], 4)])
def test_both_ways_with_each_suite(suite: str, tag: int) -> None:
    edge, peer = pair(suite)
    sent = sealed(peer.protect(rtp(1)))
    assert sent is not None
    assert len(sent) == 12 + 160 + tag and sent[12:172] != b"\xd5" * 160
    assert edge.unprotect(sent) == rtp(1)
    back = sealed(edge.protect(rtp(7, b"\xff" * 160, ssrc=0x99)))
    assert back is not None
    assert peer.unprotect(back) == rtp(7, b"\xff" * 160, ssrc=0x99)
    report = rr(0x99) + build_bye(0x99)
    srtcp = sealed(edge.protect_rtcp(report))
    assert srtcp is not None
    assert len(srtcp) == len(report) + 4 + 10  # E + index, and an 80-bit tag on both suites
    assert peer.receive(srtcp) == report  # SRTCP multiplexed on the RTP port, told apart


def test_forged_and_replayed_packets_are_dropped_and_counted() -> None:
    edge, peer = pair(SUITES[0])
    packet = sealed(peer.protect(rtp(1)))
    forged = packet[:20] + bytes([packet[20] ^ 1]) + packet[21:]
    before = dropped("auth")
    assert edge.unprotect(forged) is None
    assert dropped("auth") == before + 1
    assert edge.unprotect(packet) == rtp(1)
    replays = dropped("replay")
    assert edge.unprotect(packet) is None
    assert dropped("replay") == replays + 1
    assert edge.unprotect(b"\x80\x08") is None  # shorter than a header
    assert edge.unprotect_rtcp(b"\x81\xc8\x00\x01" + bytes(20)) is None


def test_the_peers_mki_is_checked_and_cut_out() -> None:
    """RFC 3711 §3.1: the MKI sits between the encrypted payload and the tag, outside the
    authenticated portion (libsrtp's srtp_protect_mki puts it there)."""
    edge, peer = pair(SUITES[1], MasterKey(PEER_KEY.key, None, b"\x00\x07"))
    packet = sealed(peer.protect(rtp(3)))
    with_mki = packet[:-4] + b"\x00\x07" + packet[-4:]
    assert edge.unprotect(with_mki) == rtp(3)
    before = dropped("mki")
    other = sealed(peer.protect(rtp(4)))
    assert edge.unprotect(other[:-4] + b"\x00\x08" + other[-4:]) is None
    assert dropped("mki") == before + 1
    report = sealed(peer.protect_rtcp(build_bye(5)))
    assert edge.unprotect_rtcp(report[:-10] + b"\x00\x07" + report[-10:]) == build_bye(5)


def test_a_spent_key_takes_no_more_packets() -> None:
    edge, peer = pair(SUITES[0], MasterKey(PEER_KEY.key, 3))
    for seq in range(1, 4):
        assert edge.unprotect(sealed(peer.protect(rtp(seq)))) is not None
    before = dropped("key_expired")
    assert edge.unprotect(sealed(peer.protect(rtp(4)))) is None
    assert dropped("key_expired") == before + 1


def test_a_reinvite_rebuilds_only_the_context_whose_key_changed() -> None:
    edge, peer = pair(SUITES[0])
    for seq in range(1, 4):
        assert peer.unprotect(sealed(edge.protect(rtp(seq, ssrc=7)))) is not None
    new_peer_key = MasterKey(bytes(range(200, 230)))
    edge.update(SrtpTerms(1, SUITES[0], EDGE_KEY, new_peer_key))
    # our context goes on: it will not protect index 1 again (a restarted context would,
    # and reuse its keystream), and the peer's receiver takes the next packet
    unsent = dropped("unsent")
    assert edge.protect(rtp(1, ssrc=7)) is None
    assert dropped("unsent") == unsent + 1
    assert peer.unprotect(sealed(edge.protect(rtp(4, ssrc=7)))) is not None
    rekeyed = SrtpSession(SrtpTerms(1, SUITES[0], new_peer_key, EDGE_KEY))
    assert edge.unprotect(sealed(rekeyed.protect(rtp(1)))) == rtp(1)


class Sink:
    def __init__(self) -> None:
        self.rtp: list[bytes] = []
        self.rtcp: list[bytes] = []

    def on_rtp(self, data: bytes, source: Address) -> None:
        self.rtp.append(data)

    def on_rtcp(self, data: bytes, source: Address) -> None:
        self.rtcp.append(data)


async def test_a_secured_socket_protects_everything_it_sends() -> None:
    """The hook is the socket: any sender through its transport (the leg's audio, another
    module's DTMF) is protected; what arrives is opened before the leg sees it."""
    loop = asyncio.get_running_loop()
    edge, peer = pair(SUITES[0])
    sockets = []
    for protocol in (RtpProtocol, RtcpProtocol):
        _, proto = await loop.create_datagram_endpoint(protocol, local_addr=("127.0.0.1", 0))
        sockets.append(proto)
    rtp_socket, rtcp_socket = sockets
    sink = Sink()
    for proto in sockets:
        proto.leg = sink
        proto.secure(edge)
    far = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    far.bind(("127.0.0.1", 0))
    far.setblocking(False)
    try:
        assert rtp_socket.transport is not None and rtcp_socket.transport is not None
        rtp_socket.transport.sendto(rtp(1), far.getsockname())
        rtcp_socket.transport.sendto(build_bye(1), far.getsockname())
        wire = [await loop.sock_recv(far, 2048) for _ in range(2)]
        assert rtp(1) not in wire and build_bye(1) not in wire
        assert peer.unprotect(wire[0]) == rtp(1) and peer.unprotect_rtcp(wire[1]) == build_bye(1)
        far.sendto(sealed(peer.protect(rtp(9))), rtp_socket.transport.get_extra_info("sockname"))
        far.sendto(rtp(10), rtp_socket.transport.get_extra_info("sockname"))  # plain: dropped
        far.sendto(
            sealed(peer.protect_rtcp(build_bye(2))),
            rtcp_socket.transport.get_extra_info("sockname"),
        )
        for _ in range(50):
            if sink.rtp and sink.rtcp:
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.05)
        assert sink.rtp == [rtp(9)] and sink.rtcp == [build_bye(2)]
        rtp_socket.secure(None)  # a call back to plain RTP sends in the clear again
        rtp_socket.transport.sendto(rtp(2), far.getsockname())
        assert await loop.sock_recv(far, 2048) == rtp(2)
    finally:
        far.close()
        for proto in sockets:
            if proto.transport is not None:
                proto.transport.close()
