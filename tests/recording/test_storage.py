"""Storage: S3 against a local S3-compatible server (moto's), retention sweeps."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiobotocore.session import get_session
from moto.server import ThreadedMotoServer

from telephony_edge.calls.leg import LegEnded
from telephony_edge.recording.storage import LocalStorage
from tests.calls.test_bridge import start_call
from tests.conftest import Edge, Receiver, TestLeg, edge_settings, free_port, wait_for
from tests.recording.audio import read_channels
from tests.recording.test_call_recording import SECRET, download, names

BUCKET = "edge-recordings"
ACCESS = {"access_key_id": "test-access-key", "secret_access_key": "test-secret-key"}
KEYS = {f"aws_{name}": value for name, value in ACCESS.items()}


@pytest.fixture(scope="module")
def s3_url() -> Iterator[str]:
    """A local S3-compatible server on 127.0.0.1 (never the cloud)."""
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
async def bucket(s3_url: str) -> AsyncIterator[Any]:
    session = get_session()
    async with session.create_client(
        "s3", region_name="us-east-1", endpoint_url=s3_url, **KEYS
    ) as s3:
        await s3.create_bucket(Bucket=BUCKET)
        yield s3
        listed = await s3.list_objects_v2(Bucket=BUCKET)
        for item in listed.get("Contents", []):
            await s3.delete_object(Bucket=BUCKET, Key=item["Key"])
        await s3.delete_bucket(Bucket=BUCKET)


async def test_a_recording_goes_to_s3_and_the_payload_has_its_presigned_url(
    make_edge: Any, receiver: Receiver, speech: bytes, tmp_path: Path, s3_url: str, bucket: Any
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
            "s3": {"bucket": BUCKET, "endpoint_url": s3_url, "prefix": "calls/", **ACCESS},
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
    assert meta["url"].startswith(f"{s3_url}/{BUCKET}/calls/{record.call_id}.wav?")
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
    assert (await bucket.list_objects_v2(Bucket=BUCKET)).get("KeyCount") == 0


async def test_the_local_sweep_deletes_only_old_recordings(tmp_path: Path) -> None:
    old, new, other = tmp_path / "call_old.wav", tmp_path / "call_new.mp3", tmp_path / "notes.txt"
    for path in (old, new, other):
        path.write_bytes(b"x")
    week_ago = time.time() - 7 * 24 * 3600
    os.utime(old, (week_ago, week_ago))
    os.utime(other, (week_ago, week_ago))
    assert await LocalStorage(tmp_path).sweep(time.time() - 24 * 3600) == 1
    assert names(tmp_path) == ["call_new.mp3", "notes.txt"]
