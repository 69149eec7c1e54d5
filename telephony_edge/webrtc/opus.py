"""Opus both ways: the agent's payloads from canonical 16 kHz frames, and the caller's
packets decoded to canonical frames on the event loop.

aiortc's sender would encode ``AudioFrame``\\ s: at 48 kHz stereo, 96 kbit/s,
in a thread-pool hop per frame, after computing each frame's audio level
with numpy. :class:`OpusPacketizer` instead feeds libopus (PyAV) the 16 kHz
mono canonical frames directly (Opus takes 16 kHz input; the RTP clock stays
48 kHz, RFC 7587): no resampling, no thread hop and no level computation;
:mod:`telephony_edge.webrtc.sender` puts its payloads into RTP. The encoder
runs SILK wideband (``application=voip``, 32 kbit/s VBR, complexity 5):
below 5 it costs less but scores lower (PESQ wideband on the speech
fixture: 3.98 at 5, 3.31 at 1, 3.07 at 0), and CELT (``audio``,
``lowdelay``) is cheaper only at a higher bit rate (``bench/profiles/webrtc.md``).
While the agent is quiet, after one silent frame through the encoder (its
tail), the same encoded silence payload is sent again without encoding.

Inbound, aiortc would hand each packet to a decoder thread per call (a
queue, a thread wake-up, and a hop back to the loop per packet) that decodes
to 48 kHz stereo, which the leg then resampled to 16 kHz mono.
:class:`OpusToCanonical` decodes the packet where it arrives instead,
straight to 16 kHz mono: libopus itself (the copy PyAV's wheel bundles,
through ctypes), because PyAV's decoder (FFmpeg's) only ever outputs
48 kHz. No resampling, and no FFmpeg packet or frame objects per packet.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import fractions
import functools
import weakref
from pathlib import Path
from typing import Final

import av
from av import AudioFrame, CodecContext

from telephony_edge.audio.frames import FRAME_BYTES, SAMPLE_RATE, SILENCE_FRAME, FrameSplitter

RTP_RATE: Final = 48_000
RTP_SAMPLES: Final = RTP_RATE // 50  # 20 ms on the RTP clock
BIT_RATE: Final = 32_000  # wideband speech
COMPLEXITY: Final = 5  # of 0-10: most of the quality for half the CPU of 10
_IN_SAMPLES: Final = FRAME_BYTES // 2
_IN_TIME_BASE: Final = fractions.Fraction(1, SAMPLE_RATE)


class OpusPacketizer:
    """Canonical 20 ms frames in, one Opus payload per frame out."""

    def __init__(self) -> None:
        codec = CodecContext.create("libopus", "w")
        codec.sample_rate = SAMPLE_RATE
        codec.layout = "mono"
        codec.format = "s16"
        codec.bit_rate = BIT_RATE
        codec.time_base = _IN_TIME_BASE
        codec.options = {"application": "voip", "compression_level": str(COMPLEXITY)}
        self._codec = codec
        self._in = 0
        self._quiet = True
        self._silence = self._encode(SILENCE_FRAME) or b""
        while not self._silence:  # the encoder's look-ahead, at most a frame or two
            self._silence = self._encode(SILENCE_FRAME) or b""
        self.encoded = 0

    def _encode(self, pcm: bytes) -> bytes | None:
        frame = AudioFrame(format="s16", layout="mono", samples=_IN_SAMPLES)
        frame.planes[0].update(pcm)
        frame.sample_rate = SAMPLE_RATE
        frame.pts = self._in
        frame.time_base = _IN_TIME_BASE
        self._in += _IN_SAMPLES
        packets = self._codec.encode(frame)
        return bytes(packets[0]) if packets else None

    def payload(self, frame: bytes | None) -> bytes:
        """The Opus payload for one 20 ms slot: ``frame``, or silence for None."""
        if frame is None and self._quiet:
            return self._silence
        self._quiet = frame is None  # one silent frame through the encoder, then reuse
        self.encoded += 1
        return self._encode(frame if frame is not None else SILENCE_FRAME) or self._silence


class OpusToCanonical:
    """One caller's Opus payloads in (in order, as aiortc's jitter buffer releases them),
    canonical 20 ms frames out."""

    def __init__(self) -> None:
        lib = _libopus()
        error = ctypes.c_int()
        self._decoder = lib.opus_decoder_create(SAMPLE_RATE, 1, ctypes.byref(error))
        if error.value != 0 or not self._decoder:
            raise RuntimeError(f"opus_decoder_create failed ({error.value})")
        weakref.finalize(self, lib.opus_decoder_destroy, self._decoder)
        self._decode = lib.opus_decode
        self._pcm = ctypes.create_string_buffer(_MAX_DECODED * 2)
        self._split = FrameSplitter(FRAME_BYTES)

    def frames(self, payload: bytes) -> list[bytes]:
        """The whole canonical frames this packet completes (:class:`Undecodable`: none)."""
        samples = self._decode(self._decoder, payload, len(payload), self._pcm, _MAX_DECODED, 0)
        if samples < 0:
            raise Undecodable(f"opus_decode: error {samples}")
        return self._split.push(self._pcm.raw[: samples * 2])


class Undecodable(ValueError):
    """libopus refused a payload (the packet is skipped, the decoder keeps its state)."""


_MAX_DECODED: Final = SAMPLE_RATE * 120 // 1000  # Opus's longest packet, 120 ms


@functools.cache
def _libopus() -> ctypes.CDLL:
    """libopus: the copy PyAV's wheel bundles (the encoder's), else the system's."""
    bundled = Path(av.__file__).resolve().parent.parent / "av.libs"
    found = sorted(bundled.glob("libopus*.so*"))
    path = str(found[0]) if found else ctypes.util.find_library("opus")
    if path is None:
        raise RuntimeError("libopus not found (neither in PyAV's wheel nor on the system)")
    lib = ctypes.CDLL(path)
    lib.opus_decoder_create.restype = ctypes.c_void_p
    lib.opus_decoder_create.argtypes = [ctypes.c_int32, ctypes.c_int, ctypes.POINTER(ctypes.c_int)]
    lib.opus_decode.restype = ctypes.c_int
    lib.opus_decode.argtypes = [
        ctypes.c_void_p,
        ctypes.c_char_p,
        ctypes.c_int32,
        ctypes.c_void_p,
        ctypes.c_int,
        ctypes.c_int,
    ]
    lib.opus_decoder_destroy.restype = None
    lib.opus_decoder_destroy.argtypes = [ctypes.c_void_p]
    return lib
