"""The edge's outbound RTP stream, sans-I/O: one slot per 20 ms tick, silence where the
agent is quiet, nothing on hold, timestamps and sequence numbers continuous throughout,
and the pacer's after-playout stage that makes it order-independent."""

from __future__ import annotations

import asyncio
import audioop
import math

import pytest

from telephony_edge.audio.g722 import G722Decoder, G722Encoder
from telephony_edge.audio.transcode import G711Decoder, G711Encoder
from telephony_edge.calls.pacing import Pacer
from telephony_edge.sip.leg import LAWS
from telephony_edge.sip.rtp import RtpPacket, RtpSender, parse_rtp
from telephony_edge.sip.rtp_out import OutboundStream, silence_payload

TONE = b"".join(
    int(8000 * math.sin(i * 0.3)).to_bytes(2, "little", signed=True) for i in range(320)
)


def stream(codec: str = "PCMU") -> OutboundStream:
    encoder = G722Encoder() if codec == "G722" else G711Encoder(LAWS[codec])
    sender = RtpSender(0, ssrc=7, seq=65534, ts=0xFFFFFF00, continuous=True)
    return OutboundStream(codec, encoder, sender)


def parsed(data: bytes | None) -> RtpPacket:
    assert data is not None
    packet = parse_rtp(data)
    assert packet is not None
    return packet


@pytest.mark.parametrize("codec", ["PCMU", "PCMA", "G722"])
def test_the_silence_payload_is_built_once_and_decodes_as_silence(codec: str) -> None:
    payload = silence_payload(codec)
    assert len(payload) == 160 and silence_payload(codec) is payload  # cached
    decoder = G722Decoder() if codec == "G722" else G711Decoder(LAWS[codec], 20)
    decoder.decode(G722Encoder().encode(TONE) if codec == "G722" else payload)  # after audio
    levels = [audioop.rms(decoder.decode(payload), 2) for _ in range(50)]
    assert max(levels[5:]) < 20  # below -64 dBFS once the decoder has settled


def test_one_slot_per_tick_silence_audio_hold_with_continuous_numbering() -> None:
    out = stream()
    sent: list[RtpPacket] = []
    t = 100.0
    for _ in range(3):  # the agent quiet: silence
        sent.append(parsed(out.fill(t, sending=True)))
        t += 0.02
    for _ in range(2):  # the agent speaks: its frame takes the slot, fill adds nothing
        sent.append(parsed(out.audio(TONE, talkspurt_start=False, now=t)))
        assert out.fill(t, sending=True) is None
        t += 0.02
    sent.append(parsed(out.fill(t, sending=True)))
    t += 0.02
    for _ in range(50):  # on hold for a second: nothing sent, the slots pass
        assert out.fill(t, sending=False) is None
        t += 0.02
    out.skip(t)  # the agent spoke into the hold: its slot passes too
    assert out.fill(t, sending=True) is None
    t += 0.02
    sent.append(parsed(out.fill(t, sending=True)))

    assert [p.sequence for p in sent] == [(65534 + n) & 0xFFFF for n in range(7)]
    slots = [0, 1, 2, 3, 4, 5, 57]
    assert [p.timestamp for p in sent] == [(0xFFFFFF00 + 160 * s) & 0xFFFFFFFF for s in slots]
    # the marker: the stream's first packet and the agent's talkspurt, whatever playout said
    assert [p.marker for p in sent] == [True, False, False, True, False, False, False]
    assert sent[0].payload == sent[2].payload == b"\xff" * 160
    assert sent[3].payload != sent[2].payload
    assert out.silence_sent == 5 and out.sender.sent == 7


def test_rtp_time_is_the_last_slot_plus_the_time_since() -> None:
    out = stream()
    out.fill(10.0, sending=True)
    out.fill(10.02, sending=True)
    assert out.rtp_time(10.02) == (0xFFFFFF00 + 160) & 0xFFFFFFFF
    assert out.rtp_time(10.1) == (0xFFFFFF00 + 160 + 640) & 0xFFFFFFFF
    for n in range(10):  # on hold, the clock still runs
        out.fill(10.04 + n * 0.02, sending=False)
    assert out.rtp_time(10.3) == (0xFFFFFF00 + 160 * 15) & 0xFFFFFFFF


def test_a_late_pacer_keeps_the_grid_a_restarted_one_moves_the_timestamp_by_whole_slots() -> None:
    out = stream()
    first = parsed(out.fill(0.0, sending=True))

    def since_first(packet: RtpPacket) -> int:
        return (packet.timestamp - first.timestamp) & 0xFFFFFFFF

    late = parsed(out.fill(0.1, sending=True))  # 80 ms late, then caught up at once
    caught = [parsed(out.fill(0.1 + n * 0.001, sending=True)) for n in range(4)]
    assert since_first(late) == 160
    assert [since_first(p) for p in caught] == [320, 480, 640, 800]
    restarted = parsed(out.fill(1.0, sending=True))  # ~0.9 s not ticked: skipped in slots
    assert since_first(restarted) % 160 == 0
    assert abs(since_first(restarted) - 8000) <= 160
    assert restarted.sequence == (caught[-1].sequence + 1) & 0xFFFF


async def test_after_playout_subscribers_tick_after_the_others_whatever_the_order() -> None:
    pacer = Pacer(frame_s=0.005)
    order: list[str] = []
    pacer.subscribe("leg", lambda: order.append("fill"), after_playout=True)
    pacer.subscribe("bridge", lambda: order.append("play"))
    await asyncio.sleep(0.03)
    pacer.unsubscribe("bridge")
    ticked = len(order)
    await asyncio.sleep(0.02)
    await pacer.close()
    assert ticked >= 4 and order[:ticked] == ["play", "fill"] * (ticked // 2)
    assert set(order[ticked:]) <= {"fill"} and len(order) > ticked  # on its own too
