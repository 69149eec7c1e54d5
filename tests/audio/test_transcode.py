"""Leg-boundary codec objects: wire audio in and out of canonical frames."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from telephony_edge.audio import g711
from telephony_edge.audio.frames import FRAME_BYTES, SAMPLE_RATE
from telephony_edge.audio.g711 import Law
from telephony_edge.audio.transcode import G711Decoder, G711Encoder, Pcm48kTo16k
from tests.audio.signals import chunks, db, fit_tone, measured_delay_s, rms, samples, stream, tone


def g711_tone(law: Law, freq: float, seconds: float, amp: float) -> bytes:
    return g711.encode(law, tone(freq, 8000, seconds, amp))


@pytest.mark.parametrize("law", list(Law))
def test_decoder_turns_20ms_payloads_into_canonical_frames(law: Law) -> None:
    dec = G711Decoder(law)
    payloads = list(chunks(g711_tone(law, 1000, 0.5, 12000), 160))
    frames = [dec.decode(p) for p in payloads]
    assert all(len(f) == FRAME_BYTES for f in frames)
    y = samples(b"".join(frames))[1600:]
    amp, residual = fit_tone(y, 1000, SAMPLE_RATE)
    assert abs(db(amp / 12000)) <= 0.5
    # G.711 quantisation noise of a loud tone is ~38 dB down; images are below that.
    assert db(rms(residual) / (amp / np.sqrt(2))) <= -30


def test_decode_b64_is_decode_of_the_base64_payload() -> None:
    payloads = list(chunks(g711_tone(Law.ULAW, 700, 0.2, 9000), 160))
    a, b = G711Decoder(Law.ULAW), G711Decoder(Law.ULAW)
    for p in payloads:
        text = base64.b64encode(p).decode()
        assert a.decode_b64(text) == b.decode(p)
        assert a.decode_b64(text.encode()) == b.decode(p)


def test_ulaw_silence_decodes_to_digital_silence() -> None:
    dec = G711Decoder(Law.ULAW)
    for _ in range(3):
        assert dec.decode(bytes([g711.silence_byte(Law.ULAW)]) * 160) == bytes(FRAME_BYTES)


def test_the_law_matters() -> None:
    payload = g711_tone(Law.ALAW, 1000, 0.02, 12000)
    assert G711Decoder(Law.ALAW).decode(payload) != G711Decoder(Law.ULAW).decode(payload)


@pytest.mark.parametrize("law", list(Law))
def test_encoder_turns_canonical_frames_into_20ms_payloads(law: Law) -> None:
    enc = G711Encoder(law)
    out = [enc.encode(f) for f in chunks(tone(1000, SAMPLE_RATE, 0.5, 12000), FRAME_BYTES)]
    assert all(len(p) == 160 for p in out)
    y = samples(g711.decode(law, b"".join(out)))[800:]
    amp, residual = fit_tone(y, 1000, 8000)
    assert abs(db(amp / 12000)) <= 0.5
    assert db(rms(residual) / (amp / np.sqrt(2))) <= -30


def test_encode_b64_is_base64_of_encode() -> None:
    a, b = G711Encoder(Law.ULAW), G711Encoder(Law.ULAW)
    for frame in chunks(tone(440, SAMPLE_RATE, 0.1, 5000), FRAME_BYTES):
        assert base64.b64decode(a.encode_b64(frame)) == b.encode(frame)


def test_encoder_keeps_agent_sibilants_out_of_the_phone_band() -> None:
    # 5 kHz is fine at 16 kHz but would alias to 3 kHz at 8 kHz if not filtered.
    enc = G711Encoder(Law.ULAW)
    data = tone(5000, SAMPLE_RATE, 0.5, 12000, phase=0.3)
    y = samples(g711.decode(Law.ULAW, b"".join(enc.encode(f) for f in chunks(data, 640))))
    assert db(rms(y[800:]) / (12000 / np.sqrt(2))) <= -40


@pytest.mark.parametrize("law", list(Law))
def test_round_trip_through_the_phone_leg(law: Law) -> None:
    """Agent audio out to the network and back in: same tone, ~2.4 ms later."""
    enc, dec = G711Encoder(law), G711Decoder(law)

    def leg(frame: bytes) -> bytes:
        return dec.decode(enc.encode(frame))

    y = stream(leg, tone(1000, SAMPLE_RATE, 0.5, 12000), FRAME_BYTES)[1600:]
    amp, _ = fit_tone(y, 1000, SAMPLE_RATE)
    assert abs(db(amp / 12000)) <= 1.0
    delay = measured_delay_s(leg, SAMPLE_RATE, SAMPLE_RATE, 3300)
    assert delay == pytest.approx(enc.delay_s + dec.delay_s, abs=1e-4)


def test_each_direction_adds_at_most_2ms() -> None:
    for codec in (G711Decoder(), G711Encoder(), Pcm48kTo16k()):
        assert codec.delay_s <= 0.002
    dec = G711Decoder(Law.ULAW)

    def ulaw_in(pcm8k: bytes) -> bytes:
        return dec.decode(g711.encode(Law.ULAW, pcm8k))

    assert measured_delay_s(ulaw_in, 8000, SAMPLE_RATE, 3300) <= 0.002


def test_decoder_accepts_other_packet_times() -> None:
    dec = G711Decoder(Law.ULAW, frame_ms=30)
    assert len(dec.decode(bytes([0xFF]) * 240)) == 960
    assert len(dec.decode(bytes([0xFF]) * 160)) == 640


def test_reset_forgets_the_previous_stream() -> None:
    payload = g711_tone(Law.ULAW, 1000, 0.02, 12000)
    dec = G711Decoder(Law.ULAW)
    first = dec.decode(payload)
    assert dec.decode(payload) != first  # state carried over
    dec.reset()
    assert dec.decode(payload) == first
    enc = G711Encoder(Law.ULAW)
    frame = tone(1000, SAMPLE_RATE, 0.02, 12000)
    first = enc.encode(frame)
    assert enc.encode(frame) != first
    enc.reset()
    assert enc.encode(frame) == first


def test_webrtc_48k_in() -> None:
    pcm48 = tone(1000, 48000, 0.02, 12000)
    assert len(pcm48) == 1920
    assert len(Pcm48kTo16k().process(pcm48)) == FRAME_BYTES


def test_webrtc_stereo() -> None:
    mono = tone(1000, 48000, 0.2, 12000)
    left = np.frombuffer(mono, dtype=np.int16)
    stereo = np.stack([left, left], axis=1).tobytes()  # interleaved L R
    from_stereo = b"".join(Pcm48kTo16k(channels=2).process(c) for c in chunks(stereo, 3840))
    from_mono = b"".join(Pcm48kTo16k().process(c) for c in chunks(mono, 1920))
    assert from_stereo == from_mono
    with pytest.raises(ValueError):
        Pcm48kTo16k(channels=6)


def test_webrtc_48k_keeps_wideband_speech() -> None:
    """48 → 16 kHz keeps a 6 kHz tone (beyond the phone band) at level, alias-free."""
    y = stream(Pcm48kTo16k().process, tone(6000, 48000, 0.5, 12000), 1920)
    amp, residual = fit_tone(y[1600:], 6000, 16000)
    assert abs(db(amp / 12000)) <= 1.0
    assert db(rms(residual) / (amp / np.sqrt(2))) <= -40
