"""What the recording tests share: reading a recording's channels and finding audio in them."""

from __future__ import annotations

import io
import json
import subprocess
import tempfile
import wave

import numpy as np

RATE = 16_000


def read_channels(data: bytes) -> tuple[int, list[np.ndarray]]:
    """A WAV file's (channel count, [samples per channel]) as float arrays."""
    with wave.open(io.BytesIO(data)) as wav:
        assert (wav.getframerate(), wav.getsampwidth()) == (RATE, 2)
        channels = wav.getnchannels()
        pcm = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").astype(np.float64)
    return channels, [pcm[i::channels] for i in range(channels)]


def probe(data: bytes) -> tuple[int, float]:
    """A compressed recording's (channels, seconds) as ffprobe reads them, as a player would."""
    with tempfile.NamedTemporaryFile() as file:
        file.write(data)
        file.flush()
        entries = "stream=channels:format=duration"
        out = subprocess.run(
            ["ffprobe", "-v", "error", "-show_entries", entries, "-of", "json", file.name],
            capture_output=True,
            text=True,
            check=True,
        )
    found = json.loads(out.stdout)
    return found["streams"][0]["channels"], float(found["format"]["duration"])


def locate(haystack: np.ndarray, needle: np.ndarray) -> tuple[float, float]:
    """Where ``needle`` best matches in ``haystack`` (seconds) and how well (0…1).

    The match is the peak of the cross-correlation, normalized by both
    signals' energy over the matched stretch: 1.0 is the same audio.
    """
    n = len(needle)
    assert len(haystack) >= n > 0
    size = 1 << int(np.ceil(np.log2(len(haystack) + n)))
    corr = np.fft.irfft(np.fft.rfft(haystack, size) * np.conj(np.fft.rfft(needle, size)), size)
    corr = corr[: len(haystack) - n + 1]
    lag = int(np.argmax(corr))
    window = haystack[lag : lag + n]
    score = corr[lag] / (np.linalg.norm(window) * np.linalg.norm(needle) + 1e-9)
    return lag / RATE, float(score)


def rms(samples: np.ndarray) -> float:
    return float(np.sqrt(np.mean(samples**2))) if len(samples) else 0.0


def locate_in_pieces(
    haystack: np.ndarray, needle: np.ndarray, piece_s: float = 0.5
) -> tuple[float, float]:
    """Where ``needle`` starts in ``haystack`` by its pieces, and the share that agree.

    Each ``piece_s`` piece of the needle is located on its own; the answer is
    the median of where each says the needle starts, and the share of pieces
    that match well (score > 0.9) within 60 ms of it. Robust where the audio
    came over a lossy path (a late or concealed packet on a busy machine
    shifts or spoils only the pieces it falls in).
    """
    size = int(piece_s * RATE)
    found = [
        (at - i / RATE, score)
        for i in range(0, len(needle) - size + 1, size)
        for at, score in [locate(haystack, needle[i : i + size])]
    ]
    start = float(np.median([at for at, score in found if score > 0.9] or [-1.0]))
    agree = sum(score > 0.9 and abs(at - start) < 0.06 for at, score in found)
    return start, agree / len(found)
