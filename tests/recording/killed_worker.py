"""A worker that records while S3 fails, then waits to be killed (test_uploads.py).

    python -m tests.recording.killed_worker SPOOL S3_URL

Records ``call_ended`` (4 s, finished: its upload fails and is retried) and
``call_cut`` (3 s so far, still running), then prints one JSON line (the
payload ``finish`` gave, the ended file's sha256, how much of the cut call
was flushed) and waits.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
from pathlib import Path

from telephony_edge.config import RecordingOptions
from telephony_edge.recording.recorder import Recordings
from tests.recording.simulated import Clock, feed, s3_recording_settings

MP3 = RecordingOptions(enabled=True, channels="mono", format="mp3")


async def main(spool: Path, endpoint: str) -> None:
    clock = Clock()
    settings = s3_recording_settings(spool, endpoint, finish_timeout_s=1)
    recordings = Recordings(settings, public_url="http://edge.invalid", secret=None, clock=clock)
    ended = recordings.start("call_ended", MP3)
    assert ended is not None
    await feed(ended, clock, 4)
    finished = await recordings.finish("call_ended")
    digest = hashlib.sha256((spool / "call_ended.mp3").read_bytes()).hexdigest()
    cut = recordings.start("call_cut", MP3)
    assert cut is not None
    await feed(cut, clock, 3)
    flushed_s = cut.writer.frames_written * 0.02
    said = {"finished": finished, "ended_sha256": digest, "cut_after_s": flushed_s}
    print(json.dumps(said), flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), sys.argv[2]))
