"""The canonical audio format inside the edge, and helpers to cut and pad frames.

Every leg converts its wire format to this at its own boundary, nowhere else:
PCM16 little-endian, mono, 16 kHz, 20 ms frames (640 bytes).
"""

from __future__ import annotations

SAMPLE_RATE = 16_000
SAMPLE_WIDTH = 2
FRAME_MS = 20
FRAME_SAMPLES = SAMPLE_RATE * FRAME_MS // 1000  # 320
FRAME_BYTES = FRAME_SAMPLES * SAMPLE_WIDTH  # 640
SILENCE_FRAME = bytes(FRAME_BYTES)


class FrameSplitter:
    """Cuts a byte stream of arbitrary chunk sizes into whole canonical frames.

    Agent cores and networks deliver audio in chunks of any size; the bridge
    and the pacers work in 20 ms frames. A partial tail is kept until more
    arrives, so no sample is lost or duplicated.
    """

    __slots__ = ("_buf", "frame_bytes")

    def __init__(self, frame_bytes: int = FRAME_BYTES) -> None:
        self.frame_bytes = frame_bytes
        self._buf = bytearray()

    def push(self, chunk: bytes) -> list[bytes]:
        """Add a chunk; return every whole frame now available."""
        buf = self._buf
        buf += chunk
        n = len(buf) // self.frame_bytes
        if n == 0:
            return []
        size = self.frame_bytes
        frames = [bytes(buf[i * size : (i + 1) * size]) for i in range(n)]
        del buf[: n * size]
        return frames

    def flush(self) -> bytes | None:
        """Return the partial tail padded with silence to a whole frame, if any."""
        if not self._buf:
            return None
        tail = bytes(self._buf) + bytes(self.frame_bytes - len(self._buf))
        self._buf.clear()
        return tail

    def clear(self) -> None:
        self._buf.clear()

    @property
    def pending(self) -> int:
        return len(self._buf)
