"""Uploads to S3 retried through the store's failures, and a queue that outlives its worker.

S3 is moto's server behind :class:`FaultyS3`, a proxy on a real socket that
answers uploads 500 or not at all when told to.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from telephony_edge.config import RecordingOptions
from telephony_edge.recording.recorder import Recordings
from telephony_edge.recording.spool import Spool
from tests.conftest import wait_for
from tests.recording.audio import probe
from tests.recording.s3 import BUCKET, FaultyS3, stored
from tests.recording.simulated import Clock, feed, s3_recording_settings
from tests.recording.test_call_recording import download

ROOT = Path(__file__).resolve().parents[2]
MP3 = RecordingOptions(enabled=True, channels="mono", format="mp3")


def failures(reason: str) -> float:
    value = REGISTRY.get_sample_value(
        "telephony_edge_recording_upload_failures_total", {"reason": reason}
    )
    return value or 0.0


async def test_an_upload_is_retried_through_500s_and_timeouts_and_each_failure_counted(
    tmp_path: Path, moto_url: str, moto_bucket: Any
) -> None:
    before = {reason: failures(reason) for reason in ("http_5xx", "timeout")}
    async with FaultyS3(moto_url) as proxy:
        proxy.faults = ["500", "hang", "500"]
        clock = Clock()
        spool = tmp_path / "spool"
        # a timeout only where the fault hangs: a loaded machine's slow answer is no failure
        settings = s3_recording_settings(spool, proxy.url, timeout_s=3.0)
        recordings = Recordings(
            settings, public_url="http://edge.invalid", secret=None, clock=clock
        )
        recording = recordings.start("call_retried", MP3)
        assert recording is not None
        await feed(recording, clock, 5)
        meta = await recordings.finish("call_retried")

        assert proxy.injected == ["500", "hang", "500"] and proxy.uploads == 4
        assert failures("http_5xx") == before["http_5xx"] + 2
        assert failures("timeout") == before["timeout"] + 1
        # the payload's link works when it arrives: the fourth try stored the file
        assert meta is not None and meta["url"].startswith(f"{proxy.url}/{BUCKET}/calls/")
        status, body = await download(meta["url"])
        assert status == 200
        assert (len(body), hashlib.sha256(body).hexdigest()) == (meta["size_bytes"], meta["sha256"])
        assert probe(body) == (1, pytest.approx(5.0, abs=0.15))
        assert list(spool.iterdir()) == []  # stored, so not kept here
        assert recordings.spool.used_bytes == 0
        pending = REGISTRY.get_sample_value("telephony_edge_recording_uploads_pending")
        assert pending == 0
        await recordings.close()


async def test_uploads_a_killed_worker_left_are_sent_after_its_restart(
    tmp_path: Path, moto_url: str, moto_bucket: Any
) -> None:
    """A worker records two calls while S3 fails every upload: one ended (its upload being
    retried), one still running. SIGKILL. The restarted worker uploads both from the spool."""
    spool = tmp_path / "spool"
    async with FaultyS3(moto_url) as proxy:
        proxy.always = "500"
        worker = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.recording.killed_worker",
            str(spool),
            proxy.url,
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
        )
        assert worker.stdout is not None
        try:
            said = json.loads(await asyncio.wait_for(worker.stdout.readline(), 60))
            assert said["finished"] is None  # not stored in time for the webhook: late
            await wait_for(lambda: proxy.uploads >= 3, 30)  # and retried since
            # the live worker holds both files: no other process takes them
            assert Spool(spool, 1 << 30).adopt(quiet_s=0) == ([], 0)
        finally:
            worker.send_signal(signal.SIGKILL)
            await worker.wait()
        assert sorted(p.name for p in spool.iterdir()) == ["call_cut.mp3", "call_ended.mp3"]

        proxy.always = None  # the store is back; the worker restarts on the same directory
        settings = s3_recording_settings(spool, proxy.url)
        restarted = Recordings(settings, public_url="http://edge.invalid", secret=None)
        sweep = asyncio.create_task(restarted.sweep_loop())
        try:
            # the call cut off mid-way is finished by its ffmpeg (its stdin closed with the
            # worker), and adopted once it has been quiet for a few seconds
            await wait_for(lambda: not any(spool.iterdir()), 30)
        finally:
            sweep.cancel()
            await asyncio.gather(sweep, return_exceptions=True)
            await restarted.close()

    objects = await stored(moto_bucket)
    assert sorted(objects) == ["calls/call_cut.mp3", "calls/call_ended.mp3"]
    ended = objects["calls/call_ended.mp3"]
    assert hashlib.sha256(ended).hexdigest() == said["ended_sha256"]
    assert probe(ended) == (1, pytest.approx(4.0, abs=0.15))
    # the cut call's audio up to its last flush, a playable file
    assert probe(objects["calls/call_cut.mp3"])[1] >= said["cut_after_s"] - 0.2
    assert restarted.spool.used_bytes == 0


async def test_an_upload_deleted_by_retention_is_given_up(
    tmp_path: Path, moto_url: str, moto_bucket: Any
) -> None:
    async with FaultyS3(moto_url) as proxy:
        proxy.always = "500"
        clock = Clock()
        spool = tmp_path / "spool"
        settings = s3_recording_settings(spool, proxy.url, finish_timeout_s=0.5)
        recordings = Recordings(
            settings, public_url="http://edge.invalid", secret=None, clock=clock
        )
        recording = recordings.start("call_expired", MP3)
        assert recording is not None
        await feed(recording, clock, 2)
        assert await recordings.finish("call_expired") is None  # late: still failing
        assert recordings.uploads is not None and recordings.uploads.pending == 1
        os.unlink(spool / "call_expired.mp3")  # what the retention sweep does
        await wait_for(lambda: recordings.uploads is not None and not recordings.uploads.pending)
        assert recordings.spool.used_bytes == 0
        await recordings.close()
