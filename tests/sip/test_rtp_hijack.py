"""RTP hijack ("RTP bleed", Asterisk AST-2017-005) against the running edge, real sockets.

The test is the caller (its SIP written out by hand, ``test_udp_edge.Caller``) and a
stranger: another UDP socket on the same machine that sends RTP to the call's port. The
caller speaks (the speech fixture as 20 ms PCMU packets, then silence), so the agent
core's transcript (``[caller spoke N s]`` in the end-of-call webhook) says whether the
caller's audio reached it.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import secrets
import time

import pytest
from prometheus_client import REGISTRY

from telephony_edge.audio.g711 import Law
from telephony_edge.audio.transcode import G711Encoder
from telephony_edge.sip.provider import SIP_ENDPOINT
from telephony_edge.sip.rtcp import SenderInfo, build_report, ntp_time
from telephony_edge.sip.rtp import build_rtp
from tests.conftest import Edge, Receiver, free_port, read_wav, wait_for
from tests.sip.test_udp_edge import Socket, media_port, open_socket, rtp_from, sdp, start_call

LEARN_PACKETS = 4  # sip.rtp_learn_packets' default
SPEECH_S = 1.2
SILENCE_S = 1.0


def foreign_total(protocol: str = "rtp") -> float:
    value = REGISTRY.get_sample_value(
        "telephony_edge_rtp_foreign_packets_total", {"protocol": protocol}
    )
    return value or 0.0


def rtcp_outcome(outcome: str) -> float:
    value = REGISTRY.get_sample_value("telephony_edge_sip_rtcp_packets_total", {"outcome": outcome})
    return value or 0.0


def caller_packets(first_seq: int = 0) -> list[bytes]:
    """The caller's RTP: ``SPEECH_S`` of speech, then ``SILENCE_S`` of silence, 20 ms each."""
    pcm = read_wav("speech_table.wav")[: int(SPEECH_S * 32000)]
    pcm += bytes(int(SILENCE_S * 32000))
    encoder = G711Encoder(Law.ULAW)
    ssrc = secrets.randbits(32)
    return [
        build_rtp(0, first_seq + n, 160 * n, ssrc, n == 0, encoder.encode(pcm[i : i + 640]))
        for n, i in enumerate(range(0, len(pcm) - 639, 640))
    ]


class Stranger:
    """Sends in-sequence RTP of its own SSRC to the call's port, every 20 ms while running."""

    def __init__(self, sock: Socket, dest: tuple[str, int]) -> None:
        self.sock, self.dest = sock, dest
        self.seq = secrets.randbelow(60000)
        self.ssrc = secrets.randbits(32)
        self.sent = 0
        self._task: asyncio.Task[None] | None = None

    def send(self) -> None:
        payload = b"\x00" * 160  # loud, were it ever played
        self.sock.send(build_rtp(0, self.seq, 160 * self.seq, self.ssrc, False, payload), self.dest)
        self.seq += 1
        self.sent += 1

    def start(self) -> None:
        async def run() -> None:
            while True:
                self.send()
                await asyncio.sleep(0.02)

        self._task = asyncio.get_running_loop().create_task(run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


async def play(sock: Socket, dest: tuple[str, int], packets: list[bytes]) -> None:
    """``packets`` on a 20 ms clock."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    for n, packet in enumerate(packets):
        await asyncio.sleep(max(0.0, start + n * 0.02 - loop.time()))
        sock.send(packet, dest)


def spoke(payload: dict[str, object]) -> float:
    """Seconds of caller speech the agent core heard, from its transcript in the webhook."""
    chat = json.dumps(payload.get("chat"))
    marker = "[caller spoke "
    assert marker in chat, chat[:500]
    return float(chat.split(marker, 1)[1].split(" s]", 1)[0])


async def test_a_stranger_before_and_during_the_call_gets_no_audio_and_takes_none(
    sip_edge: Edge, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    rtp, stranger_sock = await open_socket(), await open_socket()
    caller, ok = await start_call(sip_edge, sdp(rtp.port))
    edge_rtp = ("127.0.0.1", media_port(ok.body))
    leg = next(iter(sip_edge.app[SIP_ENDPOINT].legs.values()))
    foreign_before, rtcp_foreign_before = foreign_total(), foreign_total("rtcp")
    stranger = Stranger(stranger_sock, edge_rtp)
    stranger.send()  # one packet before the caller's first: what took the call before
    await asyncio.sleep(0.1)
    caller.send(caller.request("ACK", cseq=caller.cseq))
    await wait_for(lambda: rtp.log, within=5)  # the greeting comes to the caller
    with caplog.at_level(logging.WARNING, logger="telephony_edge.sip.leg"):
        stranger.start()  # and all through the call, in sequence
        report = build_report(stranger.ssrc, SenderInfo(ntp_time(0.0), 0, 1, 160), ())
        stranger_sock.send(report, (edge_rtp[0], edge_rtp[1] + 1))  # RTCP too
        packets = caller_packets()
        speech_ended = asyncio.get_running_loop().time() + SPEECH_S
        await play(rtp, edge_rtp, packets)
        await stranger.stop()
        # the agent's echo of what the caller said comes back to the caller
        await wait_for(lambda: len(rtp_from(rtp, since=speech_ended)) > 30, within=5)
        caller.send(caller.request("BYE"))
        assert (await caller.response("BYE")).status == 200
        await wait_for(lambda: receiver.received, within=10)

    assert stranger_sock.log == []  # not one packet of the call's audio
    assert leg.inbound is not None and leg.inbound.source == ("127.0.0.1", rtp.port)
    assert leg.inbound.reception.packets_received == len(packets)  # none of the caller's lost
    playout = leg.inbound.playout.stats
    assert (playout.late, playout.overflow) == (0, 0)
    # every packet played but what the jitter buffer still held when the BYE came
    assert playout.decoded + len(leg.inbound.playout._pending) == len(packets)
    assert leg.inbound.stats.strangers == stranger.sent
    assert foreign_total() - foreign_before == stranger.sent
    assert leg.rtcp.received == 0  # the stranger's report was not read
    assert foreign_total("rtcp") - rtcp_foreign_before == 1
    warnings = [r.getMessage() for r in caplog.records if "from a stranger" in r.getMessage()]
    assert len(warnings) == 1, warnings  # sampled: one per call per 10 s
    assert leg.ref in warnings[0] and f"127.0.0.1:{stranger_sock.port}" in warnings[0]
    [payload] = receiver.received
    assert payload["call_status"] == "user-ended"
    assert abs(spoke(payload) - SPEECH_S) < 0.5  # the agent heard the caller, not the stranger
    for sock in (rtp, stranger_sock, caller.sip):
        sock.close()


async def test_a_natted_caller_is_learned_after_n_packets_and_a_stranger_never(
    sip_edge: Edge, receiver: Receiver
) -> None:
    named, behind_nat, stranger_sock = await open_socket(), await open_socket(), await open_socket()
    # the SDP names 127.0.0.1:<named>; the caller's packets come from <behind_nat>
    caller, ok = await start_call(sip_edge, sdp(named.port))
    edge_rtp = ("127.0.0.1", media_port(ok.body))
    stranger = Stranger(stranger_sock, edge_rtp)
    stranger.send()  # before anyone
    caller.send(caller.request("ACK", cseq=caller.cseq))
    await wait_for(lambda: named.log, within=5)  # until learned, the edge sends where the SDP says
    packets = caller_packets(first_seq=7000)
    await play(behind_nat, edge_rtp, packets[: LEARN_PACKETS - 1])
    await asyncio.sleep(0.15)
    assert behind_nat.log == []  # N - 1 packets: not learned yet
    sent_to_named = len(named.log)
    await asyncio.sleep(0.1)
    assert len(named.log) > sent_to_named  # still to the SDP's address meanwhile
    stranger.start()  # a stranger in sequence while the caller is learned and after
    await play(behind_nat, edge_rtp, packets[LEARN_PACKETS - 1 :])
    await stranger.stop()
    await wait_for(lambda: len(rtp_from(behind_nat)) > 20, within=5)
    caller.send(caller.request("BYE"))
    assert (await caller.response("BYE")).status == 200
    await wait_for(lambda: receiver.received, within=10)

    # the edge's one stream moved once, from the SDP's address to the learned source
    to_named, to_nat = rtp_from(named), rtp_from(behind_nat)
    first = to_named[0].sequence
    assert max((p.sequence - first) & 0xFFFF for p in to_named) < min(
        (p.sequence - first) & 0xFFFF for p in to_nat
    )
    assert stranger_sock.log == []
    [payload] = receiver.received
    media = payload["voip"]["media"]
    assert media["packets_received"] == len(packets)  # the N held while learning included
    assert media["packets_lost"] == 0
    assert abs(spoke(payload) - SPEECH_S) < 0.5
    for sock in (named, behind_nat, stranger_sock, caller.sip):
        sock.close()


async def test_a_natted_callers_rtcp_before_its_rtp_is_read_once_learned_and_a_strangers_is_not(
    sip_edge: Edge, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    """A phone behind NAT reports as the call starts (baresip does), before its RTP is
    learned: its report is held and read once its RTP is, a stranger's held with it is
    dropped then, with one warning naming the stranger and none naming the caller."""
    named, behind_nat = await open_socket(), await open_socket()
    nat_rtcp, stranger_sock = await open_socket(), await open_socket()
    caller, ok = await start_call(sip_edge, sdp(named.port))
    edge_rtp = ("127.0.0.1", media_port(ok.body))
    edge_rtcp = (edge_rtp[0], edge_rtp[1] + 1)
    leg = next(iter(sip_edge.app[SIP_ENDPOINT].legs.values()))
    packets = caller_packets(first_seq=300)
    ssrc = int.from_bytes(packets[0][8:12], "big")
    rtcp_foreign_before, malformed_before = foreign_total("rtcp"), rtcp_outcome("malformed")
    caller.send(caller.request("ACK", cseq=caller.cseq))
    await wait_for(lambda: leg._rtcp_socket is not None, within=5)
    with caplog.at_level(logging.WARNING, logger="telephony_edge.sip.leg"):
        report = SenderInfo(ntp_time(time.time()), 0, 0, 0)
        nat_rtcp.send(build_report(ssrc, report, ()), edge_rtcp)  # the NAT's own RTCP port
        stranger_sock.send(build_report(ssrc ^ 1, report, ()), edge_rtcp)
        stranger_sock.send(b"\x80\xc8" + bytes(4000), edge_rtcp)  # too long to hold
        await asyncio.sleep(0.3)
        assert leg.rtcp.received == 0  # held: nobody's RTP is learned yet
        assert foreign_total("rtcp") == rtcp_foreign_before
        await play(behind_nat, edge_rtp, packets[: LEARN_PACKETS + 5])
        await wait_for(lambda: leg.rtcp.received == 1, within=5)  # the caller's, read
        caller.send(caller.request("BYE"))
        assert (await caller.response("BYE")).status == 200
        await wait_for(lambda: receiver.received, within=10)

    assert leg.sources is not None and leg.sources.rtcp_source == ("127.0.0.1", nat_rtcp.port)
    assert foreign_total("rtcp") - rtcp_foreign_before == 1  # the stranger's report
    assert rtcp_outcome("malformed") - malformed_before == 1  # its long one, never held
    warnings = [r.getMessage() for r in caplog.records if "from a stranger" in r.getMessage()]
    assert len(warnings) == 1 and f"127.0.0.1:{stranger_sock.port}" in warnings[0], warnings
    for sock in (named, behind_nat, nat_rtcp, stranger_sock, caller.sip):
        sock.close()


async def test_rtp_ports_are_even_at_random_in_the_range_and_taken_ones_are_skipped() -> None:
    from telephony_edge.sip.rtp_socket import RtpPorts  # (sequential, in the transport, before)

    low = free_port() // 2 * 2
    ports = RtpPorts("127.0.0.1", low, low + 998)
    bound = [await ports.bind() for _ in range(6)]
    numbers = [port for _, port in bound]
    assert all(port % 2 == 0 and low <= port <= low + 998 for port in numbers)
    assert len(set(numbers)) == 6
    steps = {b - a for a, b in itertools.pairwise(numbers)}
    assert steps != {2}  # not one after the other: the next call's port is no guess
    for protocol, port in bound:
        assert protocol.transport is not None
        protocol.transport.close()
        ports.release(port)

    # a range of four even ports, three taken by another process: the fourth is found
    small = RtpPorts("127.0.0.1", low, low + 7)
    loop = asyncio.get_running_loop()
    others = []
    for port in (low, low + 2, low + 6):
        transport, _ = await loop.create_datagram_endpoint(
            asyncio.DatagramProtocol, local_addr=("127.0.0.1", port)
        )
        others.append(transport)
    protocol, port = await small.bind()
    assert port == low + 4
    with pytest.raises(OSError, match="no free RTP port"):
        await small.bind()
    assert protocol.transport is not None
    protocol.close()
    small.release(port)
    for transport in others:
        transport.close()

    # an even port whose odd neighbour is another's (its RTCP would go there) is not taken;
    # the pair is bound together, and closing the call's RTP socket frees both
    blocked = []
    for port in (low + 1, low + 3, low + 7):
        transport, _ = await loop.create_datagram_endpoint(
            asyncio.DatagramProtocol, local_addr=("127.0.0.1", port)
        )
        blocked.append(transport)
    protocol, port = await small.bind()
    assert port == low + 4 and protocol.rtcp_sock is not None
    assert protocol.rtcp_sock.getsockname()[1] == low + 5
    with pytest.raises(OSError, match="no free RTP port"):
        await small.bind()
    protocol.close()
    small.release(port)
    assert protocol.rtcp_sock is None
    await asyncio.sleep(0.05)  # the transport closes its socket on the loop's next turn
    again, port = await small.bind()  # both ports free again
    assert port == low + 4
    again.close()
    for transport in blocked:
        transport.close()


async def test_a_reinvite_that_moves_media_moves_both_ways_within_100_ms(
    sip_edge: Edge, receiver: Receiver
) -> None:
    old, new = await open_socket(), await open_socket()
    caller, ok = await start_call(sip_edge, sdp(old.port))
    edge_rtp = ("127.0.0.1", media_port(ok.body))
    caller.send(caller.request("ACK", cseq=caller.cseq))
    leg = next(iter(sip_edge.app[SIP_ENDPOINT].legs.values()))
    silence = [build_rtp(0, 100 + n, 160 * n, 0xABC, n == 0, b"\xff" * 160) for n in range(40)]
    await play(old, edge_rtp, silence[:5])
    await wait_for(lambda: old.log, within=5)  # the greeting, to the first address
    # the caller moves its media (direct media, a failover): a new port in a re-INVITE
    caller.send(caller.request("INVITE", sdp(new.port)))
    moved = await caller.response("INVITE")
    assert moved.status == 200
    caller.send(caller.request("ACK", cseq=caller.cseq))
    loop = asyncio.get_running_loop()
    answered = loop.time()
    old.send(silence[5], edge_rtp)  # a late packet from the old address: dropped
    await play(new, edge_rtp, silence[6:20])
    await wait_for(lambda: new.log, within=1)
    assert new.log[0][2] - answered < 0.1  # the agent's audio follows at once
    inbound = leg.inbound
    assert inbound is not None and inbound.source == ("127.0.0.1", new.port)
    await wait_for(lambda: inbound.reception.packets_received >= 19, within=1)
    await asyncio.sleep(0.05)
    assert inbound.reception.packets_received == 19  # 5 + 14, the late one left out
    after_move = len(old.log)
    await asyncio.sleep(0.1)
    assert len(old.log) == after_move  # nothing more to the old address
    caller.send(caller.request("BYE"))
    assert (await caller.response("BYE")).status == 200
    for sock in (old, new, caller.sip):
        sock.close()
