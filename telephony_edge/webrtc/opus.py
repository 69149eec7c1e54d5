"""Opus both ways: the outbound track's packets from canonical 16 kHz frames, and the
caller's packets decoded to canonical frames on the event loop.

aiortc's sender encodes the ``AudioFrame``\\ s a track returns: at 48 kHz
stereo, 96 kbit/s, in a thread-pool hop per frame, after computing each
frame's audio level with numpy. A track may instead return encoded
``av.Packet``\\ s, which the sender only packs into RTP, and that is what
:class:`OpusPacketizer` makes: libopus (PyAV) fed the 16 kHz mono canonical
frames directly (Opus takes 16 kHz input; the RTP clock stays 48 kHz, RFC
7587), so there is no resampling, no thread hop and no level computation.
While the agent is quiet, after one silent frame through the encoder (its
tail), the same encoded silence packet is sent again without encoding.
``bench/webrtc_load.py`` measures what this saves.

Inbound, aiortc would hand each packet to a decoder thread per call (a
queue, a thread wake-up, and a hop back to the loop per packet) that decodes
to 48 kHz stereo. :class:`OpusToCanonical` decodes the packet where it
arrives instead, to 48 kHz mono (libopus through PyAV decodes at 48 kHz
only), and resamples it to canonical frames once.
"""

from __future__ import annotations

import fractions
from typing import Any, Final

from av import AudioFrame, CodecContext
from av.packet import Packet

from telephony_edge.audio.frames import FRAME_BYTES, SAMPLE_RATE, SILENCE_FRAME, FrameSplitter
from telephony_edge.audio.transcode import Pcm48kTo16k

RTP_RATE: Final = 48_000
RTP_SAMPLES: Final = RTP_RATE // 50  # 20 ms on the RTP clock
TIME_BASE: Final = fractions.Fraction(1, RTP_RATE)
BIT_RATE: Final = 32_000  # wideband speech
COMPLEXITY: Final = 5  # of 0-10: most of the quality for half the CPU of 10
_IN_SAMPLES: Final = FRAME_BYTES // 2
_IN_TIME_BASE: Final = fractions.Fraction(1, SAMPLE_RATE)


class OpusPacketizer:
    """Canonical 20 ms frames in, one Opus packet per frame out (pts on the RTP clock)."""

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
        return b"".join(bytes(p) for p in packets[:1]) if packets else None

    def packet(self, frame: bytes | None, pts: int) -> Packet[Any]:
        """The packet for one 20 ms slot: ``frame`` (None: silence) at ``pts`` (48 kHz)."""
        if frame is None and self._quiet:
            payload: bytes | None = self._silence
        else:
            self._quiet = frame is None  # one silent frame through the encoder, then reuse
            payload = self._encode(frame if frame is not None else SILENCE_FRAME)
            self.encoded += 1
        packet = Packet(payload or self._silence)
        packet.pts = pts
        packet.time_base = TIME_BASE
        return packet


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
