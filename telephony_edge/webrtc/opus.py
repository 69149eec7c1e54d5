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
to 48 kHz stereo. :class:`OpusToCanonical` decodes the packet where it
arrives instead, to 48 kHz mono (libopus through PyAV decodes at 48 kHz
only), and resamples it to canonical frames once.
"""

from __future__ import annotations

import fractions
from typing import Final

from av import AudioFrame, CodecContext
from av.packet import Packet

from telephony_edge.audio.frames import FRAME_BYTES, SAMPLE_RATE, SILENCE_FRAME, FrameSplitter
from telephony_edge.audio.transcode import Pcm48kTo16k

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
        codec = CodecContext.create("libopus", "r")
        codec.format = "s16"
        codec.layout = "mono"
        codec.sample_rate = RTP_RATE
        self._codec = codec
        self._down = Pcm48kTo16k(channels=1)
        self._split = FrameSplitter(FRAME_BYTES)

    def frames(self, payload: bytes) -> list[bytes]:
        """The whole canonical frames this packet completes (av.FFmpegError: undecodable)."""
        decoded = self._codec.decode(Packet(payload))
        if len(decoded) == 1:
            frame = decoded[0]
            pcm = bytes(frame.planes[0])[: frame.samples * 2]
        else:
            pcm = b"".join(bytes(f.planes[0])[: f.samples * 2] for f in decoded)
        return self._split.push(self._down.process(pcm))
