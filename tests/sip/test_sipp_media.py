"""sipp calls whose media the test owns: RTCP both ways and ``voip.media``, RTP inactivity.

sipp does the signalling (``-set rtp_port``: the SDP names the test's RTP
socket, and its RTCP socket on the next port); the test sends the caller's
PCMA RTP with a scripted jitter and two packets missing, an RTCP sender
report, and answers the edge's sender reports with receiver reports whose
LSR/DLSR give the edge a round-trip time.
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from telephony_edge.audio.g711 import Law
from telephony_edge.audio.transcode import G711Encoder
from telephony_edge.sip.leg import SipLeg
from telephony_edge.sip.provider import SIP_ENDPOINT
from telephony_edge.sip.rtcp import ReportBlock, SenderInfo, build_report, ntp_time, parse_rtcp
from telephony_edge.sip.rtp import build_rtp
from tests.conftest import Edge, Receiver, free_port, read_wav, wait_for
from tests.sip.conftest import finished, register, sipp
from tests.sip.test_sipp import CallerMedia

CALLER_SSRC = 0xC0FFEE
MISSING = {1010, 1020}
JITTER_MS = (0, 6, 2, 9, 4)  # each packet this late on its 20 ms slot, in turn


class CallerRtcp(asyncio.DatagramProtocol):
    """The caller's RTCP socket: answers each edge SR with an RR about the edge's stream."""

    def __init__(self) -> None:
        self.reports: list[bytes] = []
        self.answered = 0
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.reports.append(data)
        for report in parse_rtcp(data) or []:
            if report.sender is not None and self.transport is not None:
                lsr = (report.sender.ntp >> 16) & 0xFFFFFFFF
                block = ReportBlock(report.ssrc, 0, 0, report.sender.packets, 0, lsr, 0)
                self.transport.sendto(build_report(CALLER_SSRC, None, (block,)), addr)
                self.answered += 1


async def caller_sockets() -> tuple[CallerMedia, CallerRtcp, int]:
    """RTP on an even port, RTCP on the next one (as the SDP's m= line implies)."""
    loop = asyncio.get_running_loop()
    for _ in range(20):
        port = free_port() // 2 * 2
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            try:
                probe.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        local = ("127.0.0.1", port)
        _, media = await loop.create_datagram_endpoint(CallerMedia, local_addr=local)
        _, rtcp = await loop.create_datagram_endpoint(CallerRtcp, local_addr=(local[0], port + 1))
        return media, rtcp, port
    raise OSError("no free RTP/RTCP port pair")


async def speak(media: CallerMedia, dest: tuple[str, int], pcm: bytes, missing: set[int]) -> int:
    """``pcm`` as 20 ms PCMA RTP on a jittered clock, leaving out ``missing``; the count sent."""
    encoder = G711Encoder(Law.ALAW)
    loop = asyncio.get_running_loop()
    start = loop.time()
    sent = 0
    assert media.transport is not None
    for n, i in enumerate(range(0, len(pcm) - 639, 640)):
        seq = 1000 + n
        late = JITTER_MS[n % len(JITTER_MS)] / 1000
        await asyncio.sleep(max(0.0, start + n * 0.02 + late - loop.time()))
        payload = encoder.encode(pcm[i : i + 640])
        if seq not in missing:
            media.transport.sendto(build_rtp(8, seq, 160 * n, CALLER_SSRC, n == 0, payload), dest)
            sent += 1
    return sent


async def the_leg(edge: Edge) -> SipLeg:
    endpoint = edge.app[SIP_ENDPOINT]
    await wait_for(lambda: endpoint.legs, within=5)
    return next(iter(endpoint.legs.values()))


async def test_rtcp_both_ways_and_voip_media_in_the_end_of_call_webhook(
    sip_edge: Edge, receiver: Receiver, tmp_path: Path
) -> None:
    reg = await register(sip_edge)
    media, rtcp, port = await caller_sockets()
    process = await sipp(
        sip_edge, "uac_external_media.xml", reg["call_id"], tmp_path,
        "-set", "rtp_port", str(port), "-d", "7000",
    )  # fmt: skip
    leg = await the_leg(sip_edge)
    assert rtcp.transport is not None
    caller_sr = build_report(CALLER_SSRC, SenderInfo(ntp_time(0.0), 0, 1, 160), ())
    rtcp.transport.sendto(caller_sr, ("127.0.0.1", leg.port + 1))
    speech = read_wav("speech_table.wav")[: 16000 * 2 * 2]
    sent = await speak(media, ("127.0.0.1", leg.port), speech + bytes(640 * 150), MISSING)
    await finished(process, tmp_path)
    media.transport.close()  # type: ignore[union-attr]
    rtcp.transport.close()

    assert leg.rtcp.received >= 1  # the caller's SR (and RRs) were read, none malformed
    assert leg.rtcp.malformed == 0
    assert rtcp.answered >= 1, "no sender report from the edge during the call"
    reports = [parse_rtcp(data) for data in rtcp.reports]
    assert all(r is not None for r in reports)
    await wait_for(lambda: receiver.received, within=10)
    [payload] = receiver.received
    assert payload["call_status"] == "user-ended"
    stats = payload["voip"]["media"]
    assert stats["codec"] == "PCMA"
    assert stats["packets_received"] == sent
    assert stats["packets_lost"] == len(MISSING)
    assert stats["fraction_lost"] == round(len(MISSING) / (sent + len(MISSING)), 4)
    assert 0.5 < stats["jitter_ms"] < 15  # the scripted 0-9 ms, plus the machine's own
    assert stats["late_packets"] == 0
    assert stats["packets_sent"] > 50  # the agent's greeting and the echo
    assert 0 <= stats["rtt_ms"] < 100  # loopback: our RR went straight back


async def test_rtp_that_stops_ends_the_call_timeout_with_a_bye_from_the_edge(
    sip_edge: Edge, receiver: Receiver, tmp_path: Path
) -> None:
    endpoint = sip_edge.app[SIP_ENDPOINT]
    endpoint.settings = endpoint.settings.model_copy(update={"rtp_timeout_s": 1.5})
    reg = await register(sip_edge)
    media, rtcp, port = await caller_sockets()
    process = await sipp(
        sip_edge, "uac_media_timeout.xml", reg["call_id"], tmp_path,
        "-set", "rtp_port", str(port),
    )  # fmt: skip
    leg = await the_leg(sip_edge)
    loop = asyncio.get_running_loop()
    # half a second, 1022 missing: the jitter buffer conceals it, plays 1023 and 1024 in
    # their own slots, and goes on giving the agent a frame every 20 ms after the stream
    # stopped, until the edge ends the call
    await speak(media, ("127.0.0.1", leg.port), bytes(640 * 25), {1022})
    stopped = loop.time()
    await finished(process, tmp_path)  # the edge's BYE came, sipp answered 200
    assert loop.time() - stopped >= 1.4
    media.transport.close()  # type: ignore[union-attr]
    rtcp.transport.close()  # type: ignore[union-attr]
    await wait_for(lambda: receiver.received, within=10)
    [payload] = receiver.received
    assert payload["call_status"] == "timeout"
    assert "no RTP" in (payload["error_message"] or "")
    assert payload["voip"]["media"]["packets_received"] == 24
    assert payload["voip"]["media"]["packets_lost"] == 1
    assert leg.inbound is not None
    playout = leg.inbound.playout.stats
    assert (playout.decoded, playout.late) == (24, 0)
    assert playout.concealed_ticks >= 160  # the one lost (and the stream's end)
    assert leg.frames_in >= 25 + 60  # 1.5 s without RTP: still a frame every 20 ms


async def test_a_call_on_hold_without_rtp_is_not_ended(
    sip_edge: Edge, receiver: Receiver, tmp_path: Path
) -> None:
    endpoint = sip_edge.app[SIP_ENDPOINT]
    endpoint.settings = endpoint.settings.model_copy(update={"rtp_timeout_s": 1.5})
    reg = await register(sip_edge)
    process = await sipp(
        sip_edge, "uac_media_hold.xml", reg["call_id"], tmp_path,
        "-set", "rtp_port", str(free_port()),
    )  # fmt: skip
    leg = await the_leg(sip_edge)
    await wait_for(lambda: leg.media is not None and leg.media.on_hold, within=5)
    held_at = asyncio.get_running_loop().time()
    await finished(process, tmp_path)  # hold 3.5 s, resume, BYE from sipp answered 200
    assert asyncio.get_running_loop().time() - held_at > 3  # held past the 1.5 s timeout
    await wait_for(lambda: receiver.received, within=10)
    [payload] = receiver.received
    assert payload["call_status"] == "user-ended"
