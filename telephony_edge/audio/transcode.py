"""Per-call codec objects used at a leg's boundary: wire audio ↔ canonical frames.

Each object is one direction of one call, because the resampler inside keeps
the tail of the previous frame (that is what makes frame boundaries
seamless). Create one per call and direction, feed it frames in order, and
``reset`` it if the stream restarts.

======================  ===================================  ================
network                 in (wire → canonical)                out
======================  ===================================  ================
Twilio (PCMU base64)    ``G711Decoder(Law.ULAW).decode_b64``  ``G711Encoder(Law.ULAW).encode_b64``
SIP/RTP PCMU or PCMA    ``G711Decoder(law).decode``           ``G711Encoder(law).encode``
WebRTC (Opus, 48 kHz)   ``Pcm48kTo16k().process``             Opus from 16 kHz (``webrtc/opus.py``)
Vonage (L16 16 kHz)     nothing: already canonical           nothing
======================  ===================================  ================

Sizes: a 20 ms G.711 payload is 160 bytes and becomes one 640-byte canonical
frame; a 640-byte frame becomes 160 bytes of G.711. Other sizes work too (the
output is then whatever is ready; cut it with ``FrameSplitter``). The added
latency of each object is ``delay_s`` (the tests hold it under 2 ms).
"""

from __future__ import annotations

import warnings
from binascii import a2b_base64, b2a_base64
from collections.abc import Callable

from telephony_edge.audio.frames import FRAME_MS, FRAME_SAMPLES
from telephony_edge.audio.g711 import Law
from telephony_edge.audio.resample import (
    DOWN_16K_TO_8K,
    DOWN_48K_TO_16K,
    UP_8K_TO_16K,
    StreamResampler,
)

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

__all__ = ["G711Decoder", "G711Encoder", "Pcm48kTo16k"]

_G711_RATE = 8_000

_Conv = Callable[[bytes, int], bytes]


class G711Decoder:
    """G.711 at 8 kHz (μ-law or A-law) → canonical PCM16 at 16 kHz.

    The law is a parameter rather than a subclass: the two differ only in the
    C expansion routine, picked once here so the hot path has no branch.
    """

    __slots__ = ("_expand", "_up", "law")

    def __init__(self, law: Law = Law.ULAW, frame_ms: int = FRAME_MS) -> None:
        """``frame_ms``: the network's packet time, sizing the fast path (20 ms)."""
        self.law = law
        self._expand: _Conv = audioop.ulaw2lin if law is Law.ULAW else audioop.alaw2lin
        self._up = StreamResampler(UP_8K_TO_16K, _G711_RATE * frame_ms // 1000)

    @property
    def delay_s(self) -> float:
        """Latency added by this direction (the upsampling filter's delay)."""
        return self._up.delay_s

    def decode(self, payload: bytes) -> bytes:
        """G.711 bytes (one per 8 kHz sample) → PCM16 16 kHz, four bytes per input byte."""
        return self._up.process(self._expand(payload, 2))

    def decode_b64(self, payload: str | bytes) -> bytes:
        """Base64 G.711 (a Twilio ``media.payload``) → PCM16 16 kHz.

        Strict: anything but clean base64 raises ``binascii.Error`` (a
        ValueError), so a garbled payload is refused rather than half-decoded.
        """
        return self._up.process(self._expand(a2b_base64(payload, strict_mode=True), 2))

    def reset(self) -> None:
        """Drop the carried state, as for a new stream."""
        self._up.reset()


class G711Encoder:
    """Canonical PCM16 16 kHz → G.711 at 8 kHz (μ-law or A-law).

    Filters away everything from 4 kHz up before decimating, so the agent's
    16 kHz speech (sibilants reach 8 kHz) does not alias into the phone band.
    """

    __slots__ = ("_compress", "_down", "law")

    def __init__(self, law: Law = Law.ULAW) -> None:
        self.law = law
        self._compress: _Conv = audioop.lin2ulaw if law is Law.ULAW else audioop.lin2alaw
        self._down = StreamResampler(DOWN_16K_TO_8K, FRAME_SAMPLES)

    @property
    def delay_s(self) -> float:
        """Latency added by this direction (the decimation filter's delay)."""
        return self._down.delay_s

    def encode(self, frame: bytes) -> bytes:
        """PCM16 16 kHz → G.711 bytes, one per 8 kHz sample (640 bytes → 160)."""
        return self._compress(self._down.process(frame), 2)

    def encode_b64(self, frame: bytes) -> bytes:
        """PCM16 16 kHz → base64 G.711 (ASCII bytes), to splice into a Twilio ``media`` message."""
        return b2a_base64(self._compress(self._down.process(frame), 2), newline=False)

    def reset(self) -> None:
        """Drop the carried state, as for a new stream."""
        self._down.reset()


class Pcm48kTo16k(StreamResampler):
    """WebRTC 48 kHz PCM16 (mono, or interleaved stereo) → canonical 16 kHz mono."""

    __slots__ = ("channels",)

    def __init__(self, channels: int = 1) -> None:
        if channels not in (1, 2):
            raise ValueError("channels must be 1 or 2")
        super().__init__(DOWN_48K_TO_16K, 48 * FRAME_MS)
        self.channels = channels

    def process(self, pcm: bytes) -> bytes:
        """48 kHz PCM16 → 16 kHz mono PCM16 (a 20 ms mono chunk is 1920 bytes)."""
        if self.channels == 2:
            pcm = audioop.tomono(pcm, 2, 0.5, 0.5)
        return StreamResampler.process(self, pcm)
