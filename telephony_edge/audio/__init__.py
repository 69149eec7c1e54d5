"""Audio core: the canonical frame format, G.711, resampling, leg-boundary codecs.

Pure and synchronous, no I/O. Everything inside the edge is PCM16 mono 16 kHz
in 20 ms frames (``frames``); each leg converts at its own boundary with the
per-call objects of ``transcode``.
"""

from telephony_edge.audio.frames import (
    FRAME_BYTES,
    FRAME_MS,
    FRAME_SAMPLES,
    SAMPLE_RATE,
    SAMPLE_WIDTH,
    SILENCE_FRAME,
    FrameSplitter,
)
from telephony_edge.audio.g711 import Law
from telephony_edge.audio.resample import FirSpec, StreamResampler
from telephony_edge.audio.transcode import G711Decoder, G711Encoder, Pcm48kTo16k

__all__ = [
    "FRAME_BYTES",
    "FRAME_MS",
    "FRAME_SAMPLES",
    "SAMPLE_RATE",
    "SAMPLE_WIDTH",
    "SILENCE_FRAME",
    "FirSpec",
    "FrameSplitter",
    "G711Decoder",
    "G711Encoder",
    "Law",
    "Pcm48kTo16k",
    "StreamResampler",
]
