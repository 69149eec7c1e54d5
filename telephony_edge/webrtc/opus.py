"""Opus packets for the outbound track, encoded straight from canonical 16 kHz frames.

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
"""

from __future__ import annotations

import fractions
from typing import Any, Final

from av import AudioFrame, CodecContext
from av.packet import Packet

from telephony_edge.audio.frames import FRAME_BYTES, SAMPLE_RATE, SILENCE_FRAME

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
