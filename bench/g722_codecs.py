"""G.722 for the SIP leg: PyAV (FFmpeg's g722) against the PyPI ``g722`` package.

    python bench/g722_codecs.py

Per-20 ms-frame cost (median µs over many single frames, each direction, of
the speech fixture ``tests/fixtures/speech_table.wav``: 16 kHz PCM16, 640
bytes → 160 bytes of G.722 and back), and round-trip quality: the fixture
streamed frame by frame through encode → decode, the output aligned to the
input by cross-correlation (G.722's QMF pair delays it a few samples), then
SNR and correlation. Both bitstreams are also decoded by the other library,
since the wire is what the peer decodes.
"""

from __future__ import annotations

import gc
import statistics
import sys
import time
import wave
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

FIXTURE = ROOT / "tests" / "fixtures" / "speech_table.wav"
FRAME = 640
ROUNDS = 7

Codec = Callable[[bytes], bytes]


def load_frames() -> list[bytes]:
    with wave.open(str(FIXTURE)) as w:
        assert (w.getframerate(), w.getsampwidth(), w.getnchannels()) == (16000, 2, 1)
        pcm = w.readframes(w.getnframes())
    return [pcm[i : i + FRAME] for i in range(0, len(pcm) - FRAME + 1, FRAME)]


# ----------------------------------------------------------------------------- implementations


def pyav_encoder() -> Codec:
    ctx = av.CodecContext.create("g722", "w")
    ctx.sample_rate = 16000
    ctx.layout = "mono"
    ctx.format = "s16"
    ctx.open()
    pts = 0

    def encode(frame: bytes) -> bytes:
        nonlocal pts
        samples = np.frombuffer(frame, dtype=np.int16).reshape(1, -1)
        f = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
        f.sample_rate = 16000
        f.pts = pts
        pts += samples.shape[1]
        return b"".join(bytes(p) for p in ctx.encode(f))

    return encode


def pyav_encoder_reused() -> Codec:
    """PyAV with one AudioFrame reused (its plane overwritten): the cheapest PyAV path."""
    ctx = av.CodecContext.create("g722", "w")
    ctx.sample_rate = 16000
    ctx.layout = "mono"
    ctx.format = "s16"
    ctx.open()
    f = av.AudioFrame(format="s16", layout="mono", samples=FRAME // 2)
    f.sample_rate = 16000
    pts = 0

    def encode(frame: bytes) -> bytes:
        nonlocal pts
        f.planes[0].update(frame)
        f.pts = pts
        pts += FRAME // 2
        return b"".join(bytes(p) for p in ctx.encode(f))

    return encode


def pyav_decoder() -> Codec:
    ctx = av.CodecContext.create("g722", "r")
    ctx.sample_rate = 16000
    ctx.layout = "mono"

    def decode(payload: bytes) -> bytes:
        return b"".join(f.to_ndarray().tobytes() for f in ctx.decode(av.Packet(payload)))

    return decode


def pkg_encoder() -> Codec:
    import G722

    state = G722.G722(16000, 64000)

    def encode(frame: bytes) -> bytes:
        samples = array("h")
        samples.frombytes(frame)
        return bytes(state.encode(samples))

    return encode


def pkg_decoder() -> Codec:
    import G722

    state = G722.G722(16000, 64000)

    def decode(payload: bytes) -> bytes:
        return state.decode(payload).tobytes()

    return decode


@dataclass
class Impl:
    name: str
    make_encoder: Callable[[], Codec]
    make_decoder: Callable[[], Codec]


IMPLS = [
    Impl("PyAV (FFmpeg g722)", pyav_encoder, pyav_decoder),
    Impl("PyAV, frame reused", pyav_encoder_reused, pyav_decoder),
    Impl("g722 package (G722)", pkg_encoder, pkg_decoder),
]


# ----------------------------------------------------------------------------- measurements


def per_frame_us(make: Callable[[], Codec], inputs: list[bytes]) -> float:
    """Median µs of one call over the inputs, best of ROUNDS fresh streams."""
    best = []
    for _ in range(ROUNDS):
        codec = make()
        times = []
        gc.disable()
        try:
            for item in inputs:
                t0 = time.perf_counter_ns()
                codec(item)
                times.append(time.perf_counter_ns() - t0)
        finally:
            gc.enable()
        best.append(statistics.median(times))
    return min(best) / 1000


def quality(reference: bytes, decoded: bytes, max_lag: int = 64) -> tuple[float, float, int]:
    """SNR (dB) and correlation of ``decoded`` against ``reference`` at the best lag."""
    ref = np.frombuffer(reference, dtype=np.int16).astype(np.float64)
    out = np.frombuffer(decoded, dtype=np.int16).astype(np.float64)
    n = min(len(ref), len(out)) - max_lag
    best = (-1.0, 0)
    for lag in range(max_lag):
        c = float(np.corrcoef(ref[:n], out[lag : lag + n])[0, 1])
        best = max(best, (c, lag))
    corr, lag = best
    a, b = ref[:n], out[lag : lag + n]
    snr = 10 * np.log10(np.sum(a * a) / max(np.sum((a - b) ** 2), 1e-9))
    return float(snr), corr, lag


def main() -> None:
    frames = load_frames()
    reference = b"".join(frames)
    print(f"fixture: {FIXTURE.name}, {len(frames)} frames of 20 ms")
    head = ("implementation", "enc µs", "dec µs", "SNR dB", "corr", "lag")
    print(f"{head[0]:<22} {head[1]:>7} {head[2]:>7} {head[3]:>7} {head[4]:>7} {head[5]:>4}")
    streams: dict[str, list[bytes]] = {}
    for impl in IMPLS:
        enc = impl.make_encoder()
        payloads = [enc(f) for f in frames]
        assert all(len(p) == 160 for p in payloads), impl.name
        streams[impl.name] = payloads
        dec = impl.make_decoder()
        snr, corr, lag = quality(reference, b"".join(dec(p) for p in payloads))
        enc_us = per_frame_us(impl.make_encoder, frames)
        dec_us = per_frame_us(impl.make_decoder, payloads)
        print(f"{impl.name:<22} {enc_us:7.1f} {dec_us:7.1f} {snr:7.1f} {corr:7.4f} {lag:4d}")
    print("cross-decoding (bitstream of one, decoder of the other):")
    for enc_impl in IMPLS:
        for dec_impl in IMPLS:
            if enc_impl is dec_impl:
                continue
            dec = dec_impl.make_decoder()
            decoded = b"".join(dec(p) for p in streams[enc_impl.name])
            snr, corr, lag = quality(reference, decoded)
            print(
                f"  {enc_impl.name} → {dec_impl.name}: SNR {snr:.1f} dB, corr {corr:.4f}, lag {lag}"
            )


if __name__ == "__main__":
    main()
