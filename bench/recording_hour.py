"""What one long recorded call costs a worker: peak memory, local disk, CPU.

    python bench/recording_hour.py [--seconds 3600] [--format mp3|ogg|wav]
                                   [--channels stereo|mono] [--storage s3|local]

Feeds the call through the recorder's own path (``Recordings.start``, both
taps per 20 ms frame, the flush each second, ``finish``; with ``--storage
s3`` the upload to moto's S3 server, in a process of its own) on a simulated
clock, as fast as the machine goes (``tests/recording/simulated.py``).
Samples, each simulated second, this process's and its ffmpeg's resident
memory, and the bytes in the recordings directory and in the temporary
directory; prints the peaks (this process's as the growth over its RSS
before the call) and the CPU time of each. An hour of stereo mp3 takes
about 30 s of CPU on this project's machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from telephony_edge.config import RecordingOptions, RecordingSettings
from telephony_edge.recording.recorder import Recordings
from tests.recording.s3 import BUCKET, KEYS, moto_server
from tests.recording.simulated import Clock, feed, s3_recording_settings

MB = 1e6


def status_kb(pid: int | str, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    return 0


def private_kb(pid: int) -> int:
    """A process's own memory: what another of it adds (its libraries' pages are shared)."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Private_Dirty:"):
            return int(line.split()[1])
    return 0


def disk_use(directory: Path) -> int:
    return sum(e.stat().st_size for e in os.scandir(directory)) if directory.exists() else 0


async def run(args: argparse.Namespace, work: Path, endpoint: str | None) -> None:
    tmp = work / "tmp"
    tmp.mkdir()
    tempfile.tempdir = str(tmp)
    spool = work / "recordings"
    clock = Clock()
    if endpoint is None:
        settings = RecordingSettings(directory=str(spool), flush_interval_s=10)
    else:
        from aiobotocore.session import get_session

        settings = s3_recording_settings(spool, endpoint, timeout_s=60, finish_timeout_s=600)
        async with get_session().create_client(
            "s3", region_name="us-east-1", endpoint_url=endpoint, **KEYS
        ) as s3:
            await s3.create_bucket(Bucket=BUCKET)
    recordings = Recordings(settings, public_url="http://edge.invalid", secret=None, clock=clock)
    options = RecordingOptions(enabled=True, channels=args.channels, format=args.format)
    warm = recordings.start("call_warm", options)  # imports and first-use costs, not measured
    assert warm is not None
    await feed(warm, clock, 2)
    await recordings.finish("call_warm")

    base_rss = status_kb("self", "VmRSS")
    peak = {"rss": base_rss, "disk": 0, "tmp": 0, "ffmpeg_rss": 0, "ffmpeg_private": 0}
    recording = recordings.start("call_long", options)
    assert recording is not None
    cpu0 = time.process_time()

    def look(second: int) -> None:
        peak["rss"] = max(peak["rss"], status_kb("self", "VmRSS"))
        peak["disk"] = max(peak["disk"], disk_use(spool))
        peak["tmp"] = max(peak["tmp"], disk_use(tmp))
        pid = None if recording.encoder is None else recording.encoder.pid
        if pid is not None and second % 60 == 0:
            peak["ffmpeg_rss"] = max(peak["ffmpeg_rss"], status_kb(pid, "VmHWM"))
            peak["ffmpeg_private"] = max(peak["ffmpeg_private"], private_kb(pid))

    started = time.monotonic()
    await feed(recording, clock, args.seconds, every_second=look)
    meta = await recordings.finish("call_long")
    look(-1)
    wall = time.monotonic() - started
    cpu = time.process_time() - cpu0
    await recordings.close()
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    peak["rss"] = max(peak["rss"], status_kb("self", "VmHWM"))
    assert meta is not None, "the recording was not stored"
    print(
        f"{args.seconds} s {args.channels} {args.format} call, {args.storage} storage:"
        f" {meta['size_bytes'] / MB:.1f} MB file, fed in {wall:.0f} s"
    )
    print(
        f"worker: peak RSS +{(peak['rss'] - base_rss) / 1024:.1f} MB over {base_rss / 1024:.0f} MB,"
        f" CPU {cpu:.1f} s"
    )
    if peak["ffmpeg_rss"]:
        ffmpeg_cpu = children.ru_utime + children.ru_stime
        print(
            f"ffmpeg: peak RSS {peak['ffmpeg_rss'] / 1024:.1f} MB, of it private"
            f" {peak['ffmpeg_private'] / 1024:.1f} MB; CPU {ffmpeg_cpu:.1f} s (both calls)"
        )
    print(
        f"disk: recordings directory peak {peak['disk'] / MB:.1f} MB,"
        f" temporary directory peak {peak['tmp'] / MB:.1f} MB,"
        f" left after it: {disk_use(spool) / MB:.1f} MB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=3600, help="length of the call")
    parser.add_argument("--format", choices=("mp3", "ogg", "wav"), default="mp3")
    parser.add_argument("--channels", choices=("stereo", "mono"), default="stereo")
    parser.add_argument("--storage", choices=("s3", "local"), default="s3")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        if args.storage == "local":
            asyncio.run(run(args, Path(work), None))
        else:
            with moto_server() as endpoint:
                asyncio.run(run(args, Path(work), endpoint))


if __name__ == "__main__":
    main()
