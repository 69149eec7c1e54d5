"""The canonical format constants and FrameSplitter."""

from __future__ import annotations

from telephony_edge.audio.frames import (
    FRAME_BYTES,
    FRAME_MS,
    FRAME_SAMPLES,
    SAMPLE_RATE,
    SAMPLE_WIDTH,
    SILENCE_FRAME,
    FrameSplitter,
)


def test_canonical_format() -> None:
    assert (SAMPLE_RATE, SAMPLE_WIDTH, FRAME_MS) == (16_000, 2, 20)
    assert FRAME_SAMPLES == 320 and FRAME_BYTES == 640
    assert bytes(640) == SILENCE_FRAME


def test_splitter_loses_and_duplicates_nothing() -> None:
    data = bytes(range(256)) * 20  # 5120 bytes: 8 frames
    splitter = FrameSplitter()
    frames: list[bytes] = []
    for size in (1, 639, 640, 641, 100, 2000, 1099):
        start = sum(len(f) for f in frames) + splitter.pending
        frames += splitter.push(data[start : start + size])
    assert all(len(f) == FRAME_BYTES for f in frames)
    assert b"".join(frames) == data[: len(frames) * FRAME_BYTES]
    assert splitter.pending == len(data[: 1 + 639 + 640 + 641 + 100 + 2000 + 1099]) % FRAME_BYTES


def test_splitter_holds_a_partial_frame_until_completed() -> None:
    splitter = FrameSplitter()
    assert splitter.push(b"\x01" * 600) == []
    assert splitter.pending == 600
    [frame] = splitter.push(b"\x02" * 50)
    assert frame == b"\x01" * 600 + b"\x02" * 40
    assert splitter.pending == 10


def test_flush_pads_the_tail_with_silence() -> None:
    splitter = FrameSplitter()
    splitter.push(b"\x05" * 10)
    assert splitter.flush() == b"\x05" * 10 + bytes(630)
    assert splitter.pending == 0
    assert splitter.flush() is None


def test_clear_drops_the_tail() -> None:
    splitter = FrameSplitter()
    splitter.push(b"\x05" * 10)
    splitter.clear()
    assert splitter.pending == 0
    assert splitter.push(bytes(640)) == [bytes(640)]


def test_other_frame_sizes() -> None:
    splitter = FrameSplitter(frame_bytes=160)  # 20 ms of 8 kHz G.711
    assert splitter.push(bytes(400)) == [bytes(160), bytes(160)]
    assert splitter.pending == 80
