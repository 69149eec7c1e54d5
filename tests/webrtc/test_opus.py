"""OpusPacketizer: canonical frames to Opus packets that a 48 kHz decoder plays back as speech;
OpusToCanonical: the caller's packets straight back to canonical frames."""

from __future__ import annotations

import audioop

import pytest
from aiortc.codecs.opus import OpusDecoder
from aiortc.jitterbuffer import JitterFrame

from telephony_edge.audio.frames import FRAME_BYTES
from telephony_edge.webrtc.opus import RTP_SAMPLES, OpusPacketizer, OpusToCanonical, Undecodable


def test_speech_survives_the_round_trip_and_silence_is_not_encoded(speech: bytes) -> None:
    frames = [speech[i : i + FRAME_BYTES] for i in range(0, len(speech) - FRAME_BYTES, FRAME_BYTES)]
    opus = OpusPacketizer()
    decoder = OpusDecoder()  # what aiortc (and a browser) decode with: 48 kHz stereo
    decoded = bytearray()
    pts = 0
    for frame in [*frames, *[None] * 50]:
        payload = opus.payload(frame)
        for out in decoder.decode(JitterFrame(payload, pts)):
            decoded += bytes(out.planes[0])[: out.samples * 4]
        pts += RTP_SAMPLES
    assert opus.encoded == len(frames) + 1  # then the same silence packet, unencoded
    mono = audioop.tomono(bytes(decoded), 2, 0.5, 0.5)
    speech_part = mono[: len(frames) * RTP_SAMPLES * 2]
    silence_part = mono[-25 * RTP_SAMPLES * 2 :]
    original = audioop.rms(speech[: len(frames) * FRAME_BYTES], 2)
    assert 0.6 * original < audioop.rms(speech_part, 2) < 1.4 * original
    assert audioop.rms(silence_part, 2) < 30


def test_the_caller_s_packets_decode_straight_to_canonical_frames(speech: bytes) -> None:
    frames = [speech[i : i + FRAME_BYTES] for i in range(0, len(speech) - FRAME_BYTES, FRAME_BYTES)]
    opus = OpusPacketizer()
    inbound = OpusToCanonical()
    decoded: list[bytes] = []
    for frame in [*frames, *[None] * 50]:
        decoded += inbound.frames(opus.payload(frame))
    assert len(decoded) == len(frames) + 50 and {len(f) for f in decoded} == {FRAME_BYTES}
    heard = b"".join(decoded)
    original = audioop.rms(speech[: len(frames) * FRAME_BYTES], 2)
    assert 0.6 * original < audioop.rms(heard[: len(frames) * FRAME_BYTES], 2) < 1.4 * original
    assert audioop.rms(b"".join(decoded[-25:]), 2) < 30
    with pytest.raises(Undecodable):  # a corrupt packet (TOC code 3 with no count byte)
        inbound.frames(b"\xff")
    assert len(inbound.frames(opus.payload(frames[0]))) == 1  # the decoder goes on
