"""G.722 (ITU-T, 64 kbit/s SB-ADPCM) at the SIP leg's boundary: 16 kHz both sides.

G.722 carries the canonical rate itself, so there is no resampling: a
640-byte canonical frame (320 samples, 20 ms) encodes to 160 bytes and 160
bytes decode to one canonical frame. The RTP clock is 8000 (RFC 3551's
historical error), so a 20 ms packet advances the timestamp by 160.

The codec is the ``g722`` package (module ``G722``, ITU-T reference C):
chosen over PyAV's FFmpeg ``g722`` by per-frame cost with identical output
(``bench/g722_codecs.py``: encode 14.8 µs against 20.4-25.1 µs, decode 11.0
against 12.5 µs; round trip of the speech fixture 28.3 dB SNR for both, and
each decodes the other's bitstream to the same result). Its state object
holds both directions; one per direction and call keeps them independent.
ADPCM is predictive: each object must see a call's whole stream in order.
"""

from __future__ import annotations

from array import array

import G722  # type: ignore[import-not-found]

__all__ = ["G722_BITRATE", "G722Decoder", "G722Encoder"]

G722_BITRATE = 64_000
_RATE = 16_000


class G722Encoder:
    """Canonical PCM16 16 kHz → G.722 (one byte per two samples: 640 bytes → 160)."""

    __slots__ = ("_state",)

    delay_s = 0.0  # no resampler; the codec's own QMF delay (22 samples) is the peer's

    def __init__(self) -> None:
        self._state = G722.G722(_RATE, G722_BITRATE)

    def encode(self, frame: bytes) -> bytes:
        samples = array("h")
        samples.frombytes(frame)
        return bytes(self._state.encode(samples))

    def reset(self) -> None:
        """Drop the predictor state, as for a new stream."""
        self._state = G722.G722(_RATE, G722_BITRATE)


class G722Decoder:
    """G.722 → canonical PCM16 16 kHz (160 bytes → one 640-byte frame)."""

    __slots__ = ("_state",)

    delay_s = 0.0

    def __init__(self) -> None:
        self._state = G722.G722(_RATE, G722_BITRATE)

    def decode(self, payload: bytes) -> bytes:
        out: array[int] = self._state.decode(payload)
        return out.tobytes()

    def reset(self) -> None:
        """Drop the predictor state, as for a new stream."""
        self._state = G722.G722(_RATE, G722_BITRATE)
