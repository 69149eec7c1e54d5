"""A one-hour recorded call, at the machine's speed: memory and local disk stay bounded.

The hour goes through the path a call's recording takes (``Recordings.start``,
the taps, the flush, ``finish``, the upload to S3) on a simulated clock. What
it replaced, converting the finished WAV to mp3 with pydub, needed for the same
hour of stereo 230 MB of WAV in the recordings directory, 252 MB more in /tmp,
and 441 MB more of the worker's memory (docs/operations.md, "Recordings").
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from telephony_edge.config import RecordingOptions
from telephony_edge.recording.recorder import Recordings
from tests.recording.s3 import stored
from tests.recording.simulated import Clock, feed, s3_recording_settings
from tests.recording.test_uploads import probe_duration

HOUR = 3600
STEREO_MP3 = RecordingOptions(enabled=True, channels="stereo", format="mp3")
MiB = 1024 * 1024


def disk_use(directory: Path) -> int:
    return sum(entry.stat().st_size for entry in os.scandir(directory))


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

    peak_disk = peak_tmp = 0
    ffmpeg_peaks: list[int] = []

    def look(second: int) -> None:
        nonlocal peak_disk, peak_tmp
        peak_disk = max(peak_disk, disk_use(spool))
        peak_tmp = max(peak_tmp, disk_use(tmp))
        if second in (60, HOUR - 1):
            assert recording is not None and recording.encoder is not None
            assert recording.encoder.pid is not None
            ffmpeg_peaks.append(peak_rss(recording.encoder.pid))

    tracemalloc.start()
    try:
        recording = recordings.start("call_hour", STEREO_MP3)
        assert recording is not None
        await feed(recording, clock, HOUR, every_second=look)
        meta = await recordings.finish("call_hour")
        _, peak_memory = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
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
    assert peak_disk <= meta["size_bytes"] + MiB, (peak_disk, meta["size_bytes"])
    assert peak_tmp == 0
    assert list(spool.iterdir()) == []
    assert recordings.spool.used_bytes == 0

    objects = await stored(moto_bucket)
    body = objects["calls/call_hour.mp3"]
    assert (len(body), hashlib.sha256(body).hexdigest()) == (meta["size_bytes"], meta["sha256"])
    assert probe_duration(body, tmp_path) == pytest.approx(HOUR, abs=0.2)
    print(
        f"1 h stereo mp3: traced peak {peak_memory / MiB:.1f} MiB, spool peak"
        f" {peak_disk / MiB:.1f} MiB, file {meta['size_bytes'] / MiB:.1f} MiB, ffmpeg peak RSS"
        f" {first_minute / MiB:.1f} -> {last / MiB:.1f} MiB"
    )
