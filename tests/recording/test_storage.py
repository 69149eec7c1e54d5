"""Storage: S3 against a local S3-compatible server (moto's, ``s3.py``), retention sweeps."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from pathlib import Path
from typing import Any

import pytest

from telephony_edge.calls.leg import LegEnded
from telephony_edge.recording.storage import LocalStorage
from tests.calls.test_bridge import start_call
from tests.conftest import Edge, Receiver, TestLeg, edge_settings, wait_for
from tests.recording.audio import read_channels
from tests.recording.s3 import ACCESS, BUCKET
from tests.recording.test_call_recording import SECRET, download, names


async def test_a_recording_goes_to_s3_and_the_payload_has_its_presigned_url(
    make_edge: Any,
    receiver: Receiver,
    speech: bytes,
    tmp_path: Path,
    moto_url: str,
    moto_bucket: Any,
) -> None:
    settings = edge_settings(
        agents={
            "echo": {
                "prompt": "You echo.",
                "session_data_webhook": receiver.url,
                "recording": {"enabled": True},
            }
        },
        webhooks={"signing_secret": SECRET, "allow_private_targets": True},
        recording={
            "directory": str(tmp_path),
            "storage": "s3",
            "s3": {"bucket": BUCKET, "endpoint_url": moto_url, "prefix": "calls/", **ACCESS},
            "url_ttl_s": 600,
        },
    )
    edge: Edge = await make_edge(settings)
    leg = TestLeg()
    record, task = await start_call(edge, leg)
    await leg.speak(speech[: 32000 * 2])
    leg.events.put_nowait(LegEnded("completed"))
    await asyncio.wait_for(task, 10)
    await wait_for(lambda: receiver.received, 10)

    meta = receiver.received[0]["recording"]
    assert meta["url"].startswith(f"{moto_url}/{BUCKET}/calls/{record.call_id}.wav?")
    assert "Expires=" in meta["url"] or "X-Amz-Expires=600" in meta["url"]
    status, body = await download(meta["url"])
    assert status == 200
    assert (len(body), hashlib.sha256(body).hexdigest()) == (meta["size_bytes"], meta["sha256"])
    channels, (left, _) = read_channels(body)
    assert channels == 2 and len(left) / 16000 == pytest.approx(meta["duration_s"], abs=0.001)
    assert names(tmp_path) == []  # uploaded, so not kept here

    storage = edge.services.call_service.recordings.storage
    assert await storage.sweep(time.time() - 3600) == 0  # younger than the retention
    assert await storage.sweep(time.time() + 60) == 1
    assert (await moto_bucket.list_objects_v2(Bucket=BUCKET)).get("KeyCount") == 0


async def test_the_local_sweep_deletes_only_old_recordings(tmp_path: Path) -> None:
    old, new, other = tmp_path / "call_old.wav", tmp_path / "call_new.mp3", tmp_path / "notes.txt"
    for path in (old, new, other):
        path.write_bytes(b"x")
    week_ago = time.time() - 7 * 24 * 3600
    os.utime(old, (week_ago, week_ago))
    os.utime(other, (week_ago, week_ago))
    assert await LocalStorage(tmp_path).sweep(time.time() - 24 * 3600) == 1
    assert names(tmp_path) == ["call_new.mp3", "notes.txt"]
