"""G.711 μ-law (PCMU) and A-law (PCMA) ↔ PCM16, sample rate unchanged.

Twilio Media Streams and most SIP trunks carry G.711 at 8 kHz; every byte is
one sample. The conversions here use the C codec in ``audioop`` (stdlib up to
Python 3.12, the ``audioop-lts`` package from 3.13): on a 20 ms frame it is
several times faster than a numpy table lookup, whose per-call overhead alone
exceeds audioop's whole run (see ``bench/transcode.py``). Its tables are the
ITU-T G.711 ones (the classic Sun reference code); ``tests/audio`` checks all
256 codes of each law against the standard's segment/mantissa definition.

``decode_table`` exposes the same 256 values as a numpy array for code that
works on arrays rather than bytes.

PCM16 here is native-endian, as audioop and numpy are; the edge runs on
little-endian hosts (x86-64, ARM64), where that is the canonical format.
"""

from __future__ import annotations

import enum
import warnings

import numpy as np
from numpy.typing import NDArray

with warnings.catch_warnings():
    # Deprecated in 3.11-3.12 (removed in 3.13, where audioop-lts provides it).
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

__all__ = [
    "Law",
    "alaw_to_pcm16",
    "decode",
    "decode_table",
    "encode",
    "pcm16_to_alaw",
    "pcm16_to_ulaw",
    "silence_byte",
    "ulaw_to_pcm16",
]


class Law(enum.StrEnum):
    """Which G.711 companding law; values are the usual SDP/config spellings."""

    ULAW = "ulaw"
    """μ-law, RTP payload type 0 (PCMU): North America, Japan, Twilio."""
    ALAW = "alaw"
    """A-law, RTP payload type 8 (PCMA): most of the rest of the world."""


def ulaw_to_pcm16(data: bytes) -> bytes:
    """μ-law bytes → PCM16, one sample per byte, same rate."""
    return audioop.ulaw2lin(data, 2)


def pcm16_to_ulaw(pcm: bytes) -> bytes:
    """PCM16 → μ-law bytes, same rate (values beyond ±32635 saturate)."""
    return audioop.lin2ulaw(pcm, 2)


def alaw_to_pcm16(data: bytes) -> bytes:
    """A-law bytes → PCM16, one sample per byte, same rate."""
    return audioop.alaw2lin(data, 2)


def pcm16_to_alaw(pcm: bytes) -> bytes:
    """PCM16 → A-law bytes, same rate (values beyond ±32767 saturate)."""
    return audioop.lin2alaw(pcm, 2)


def decode(law: Law, data: bytes) -> bytes:
    """G.711 bytes of either law → PCM16."""
    return audioop.ulaw2lin(data, 2) if law is Law.ULAW else audioop.alaw2lin(data, 2)


def encode(law: Law, pcm: bytes) -> bytes:
    """PCM16 → G.711 bytes of either law."""
    return audioop.lin2ulaw(pcm, 2) if law is Law.ULAW else audioop.lin2alaw(pcm, 2)


def silence_byte(law: Law) -> int:
    """The code for digital silence: 0xFF in μ-law, 0xD5 in A-law (not 0x00)."""
    return 0xFF if law is Law.ULAW else 0xD5


def decode_table(law: Law) -> NDArray[np.int16]:
    """The 256 PCM16 values of the G.711 codes of ``law``, indexed by code."""
    codes = np.arange(256, dtype=np.uint8)
    return np.frombuffer(decode(law, codes.tobytes()), dtype=np.int16).copy()
