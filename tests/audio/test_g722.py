"""G.722 at the SIP leg's boundary: sizes, streaming state, round-trip quality, interop."""

from __future__ import annotations

import wave
from pathlib import Path

import av
import numpy as np

from telephony_edge.audio.frames import FRAME_BYTES
from telephony_edge.audio.g722 import G722Decoder, G722Encoder
from tests.audio.signals import chunks, db, fit_tone, rms, samples, tone

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "speech_table.wav"
CODEC_DELAY = 22  # samples: G.722's QMF analysis + synthesis pair


def speech() -> bytes:
    with wave.open(str(FIXTURE)) as w:
        assert w.getframerate() == 16000 and w.getsampwidth() == 2 and w.getnchannels() == 1
        pcm = w.readframes(w.getnframes())
    return pcm[: len(pcm) // FRAME_BYTES * FRAME_BYTES]


def snr_and_corr(reference: bytes, decoded: bytes) -> tuple[float, float]:
    """At the codec's fixed delay (found by correlation in bench/g722_codecs.py)."""
    a = samples(reference)
    b = samples(decoded)[CODEC_DELAY:]
    a = a[: len(b)]
    return float(db(rms(a) / rms(a - b))), float(np.corrcoef(a, b)[0, 1])


def round_trip(pcm: bytes) -> tuple[list[bytes], bytes]:
    enc, dec = G722Encoder(), G722Decoder()
    payloads = [enc.encode(f) for f in chunks(pcm, FRAME_BYTES)]
    return payloads, b"".join(dec.decode(p) for p in payloads)


def test_a_canonical_frame_is_160_bytes_on_the_wire_and_back() -> None:
    payloads, decoded = round_trip(speech())
    assert all(len(p) == 160 for p in payloads)
    assert len(decoded) == len(payloads) * FRAME_BYTES


def test_speech_round_trip_keeps_the_waveform() -> None:
    # 64 kbit/s G.722 measures 28.3 dB SNR and 0.9993 correlation on this fixture
    # (bench/g722_codecs.py, two independent implementations agreeing). 20 dB leaves
    # margin for another build of the codec, and still fails every plausible misuse:
    # a predictor reset per frame, one state shared by both directions, byte order,
    # or a wrong rate (each falls below 10 dB or decorrelates).
    pcm = speech()
    _, decoded = round_trip(pcm)
    snr, corr = snr_and_corr(pcm, decoded)
    assert snr >= 20, snr
    assert corr >= 0.99, corr


def test_streaming_is_one_continuous_stream() -> None:
    pcm = speech()
    payloads, _ = round_trip(pcm)
    whole = G722Encoder().encode(pcm)
    assert b"".join(payloads) == whole


def test_reset_starts_a_new_stream() -> None:
    pcm = speech()[: FRAME_BYTES * 10]
    enc = G722Encoder()
    first = [enc.encode(f) for f in chunks(pcm, FRAME_BYTES)]
    enc.reset()
    assert [enc.encode(f) for f in chunks(pcm, FRAME_BYTES)] == first


def test_wideband_a_7khz_tone_passes() -> None:
    # G.711 stops at 4 kHz; G.722 is the reason to offer it, so its upper band must carry.
    pcm = tone(7000, 16000, 0.5, 8000)
    _, decoded = round_trip(pcm[: len(pcm) // FRAME_BYTES * FRAME_BYTES])
    amp, _ = fit_tone(samples(decoded)[1600:], 7000, 16000)
    assert abs(db(amp / 8000)) <= 3


def test_ffmpeg_decodes_our_bitstream() -> None:
    # the peer decodes with its own implementation: FFmpeg's (through PyAV) stands in
    pcm = speech()
    payloads, ours = round_trip(pcm)
    ctx = av.CodecContext.create("g722", "r")
    ctx.sample_rate = 16000
    ctx.layout = "mono"
    theirs = b"".join(f.to_ndarray().tobytes() for p in payloads for f in ctx.decode(av.Packet(p)))
    snr, corr = snr_and_corr(pcm, theirs)
    assert snr >= 20 and corr >= 0.99
    a, b = samples(ours), samples(theirs)
    assert db(rms(a) / max(rms(a - b), 1e-9)) >= 40  # the two decoders agree
