"""A one-hour recorded call, at the machine's speed: memory and local disk stay bounded.

The hour goes through the path a call's recording takes (``Recordings.start``,
the taps, the flush, ``finish``, the upload to S3) on a simulated clock. What
it replaced, converting the finished WAV to mp3 with pydub, needed for the same
hour of stereo 230 MB of WAV in the recordings directory, 252 MB more in /tmp,
and 441 MB more of the worker's memory (docs/operations.md, "Recordings").
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import threading
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from telephony_edge.config import RecordingOptions
from telephony_edge.recording.recorder import Recordings
from tests.recording.audio import probe
from tests.recording.s3 import stored
from tests.recording.simulated import Clock, feed, s3_recording_settings

HOUR = 3600
STEREO_MP3 = RecordingOptions(enabled=True, channels="stereo", format="mp3")
MiB = 1024 * 1024


def disk_use(directory: Path) -> int:
    return sum(entry.stat().st_size for entry in os.scandir(directory))


class DiskWatch(threading.Thread):
    """The most bytes seen in each of ``directories``, looked at every 10 ms until stopped
    (the end of the call included, where a conversion would have used /tmp)."""

    def __init__(self, *directories: Path) -> None:
        super().__init__(daemon=True)
        self.directories = directories
        self.peaks = [0] * len(directories)
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.01):
            for i, directory in enumerate(self.directories):
                # (a file may go between the listing and its stat)
                with contextlib.suppress(FileNotFoundError):
                    self.peaks[i] = max(self.peaks[i], disk_use(directory))

    def stop(self) -> list[int]:
        self.done.set()
        self.join()
        return self.peaks


def peak_rss(pid: int) -> int:
    """A process's peak resident memory so far (VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


@pytest.mark.timeout(600)
async def test_an_hour_of_stereo_mp3_goes_to_s3_in_bounded_memory_and_disk(
    tmp_path: Path, moto_url: str, moto_bucket: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the worker's /tmp: a directory of the test's own, to see whether anything lands there
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    spool = tmp_path / "spool"
    clock = Clock()
    settings = s3_recording_settings(spool, moto_url)
    recordings = Recordings(settings, public_url="http://edge.invalid", secret=None, clock=clock)
    # a first short call loads what the path imports (botocore's models) before measuring
    warm = recordings.start("call_warm", STEREO_MP3)
    assert warm is not None
    await feed(warm, clock, 1)
    assert await recordings.finish("call_warm") is not None

    peak_disk = 0
    ffmpeg_peaks: list[int] = []

    def look(second: int) -> None:
        nonlocal peak_disk
        peak_disk = max(peak_disk, disk_use(spool))  # after each flush, to the byte
        if second in (60, HOUR - 1):
            assert recording is not None and recording.encoder is not None
            assert recording.encoder.pid is not None
            ffmpeg_peaks.append(peak_rss(recording.encoder.pid))

    watch = DiskWatch(spool, tmp)
    watch.start()
    tracemalloc.start()
    try:
        recording = recordings.start("call_hour", STEREO_MP3)
        assert recording is not None
        await feed(recording, clock, HOUR, every_second=look)
        meta = await recordings.finish("call_hour")
        _, peak_memory = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        watched_disk, peak_tmp = watch.stop()
    await recordings.close()

    assert meta is not None
    assert (meta["format"], meta["channels"]) == ("mp3", "stereo")
    assert meta["duration_s"] == pytest.approx(HOUR, abs=0.05)
    # memory: what the recording path allocated at its peak, the upload included
    # (the WAV pydub read whole was 230 MB), and an ffmpeg that does not grow with the call
    assert peak_memory < 16 * MiB, f"{peak_memory / MiB:.1f} MiB"
    first_minute, last = ffmpeg_peaks
    assert last <= first_minute + 4 * MiB, (first_minute, last)
    # disk: the mp3 as it grows, nothing else (no WAV, nothing in /tmp); none once uploaded
    assert max(peak_disk, watched_disk) <= meta["size_bytes"] + MiB, (peak_disk, watched_disk)
    assert peak_tmp == 0
    assert list(spool.iterdir()) == []
    assert recordings.spool.used_bytes == 0

    objects = await stored(moto_bucket)
    body = objects["calls/call_hour.mp3"]
    assert (len(body), hashlib.sha256(body).hexdigest()) == (meta["size_bytes"], meta["sha256"])
    assert probe(body) == (2, pytest.approx(HOUR, abs=0.2))
    spool_peak = max(peak_disk, watched_disk)
    print(
        f"1 h stereo mp3: traced peak {peak_memory / MiB:.1f} MiB, spool peak"
        f" {spool_peak / MiB:.1f} MiB, file {meta['size_bytes'] / MiB:.1f} MiB,"
        f" ffmpeg peak RSS {first_minute / MiB:.1f} -> {last / MiB:.1f} MiB"
    )
