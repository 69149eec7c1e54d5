"""Where finished recordings live: the local directory, or an S3-compatible object store.

Files are always written to the local directory, the spool (``spool.py``),
while the call runs (a killed worker leaves its partial file there). With
local storage they stay and the edge serves them (``routes.py``); with S3
the finished file is uploaded (``uploads.py``: retried until stored), then
removed here, and links are the store's presigned URLs. Both delete what is
older than the retention in a periodic sweep.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Any, Protocol

from telephony_edge.config import S3Settings
from telephony_edge.recording.spool import FORMATS, is_recording

log = logging.getLogger(__name__)

CONTENT_TYPES = {"wav": "audio/wav", "mp3": "audio/mpeg", "ogg": "audio/ogg"}


class Storage(Protocol):
    async def sweep(self, cutoff: float) -> int:
        """Delete recordings last written before ``cutoff`` (unix s); return how many."""

    async def close(self) -> None: ...


def sweep_directory(directory: Path, cutoff: float) -> int:
    """Delete recording files in ``directory`` older than ``cutoff`` (blocking: run in a thread)."""
    removed = 0
    for path in directory.glob("*.*"):
        if not is_recording(path):
            continue
        with contextlib.suppress(FileNotFoundError):
            if path.stat().st_mtime < cutoff:
                path.unlink()
                removed += 1
    return removed


class LocalStorage:
    """Recordings stay in the directory they were written to."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def find(self, call_id: str) -> Path | None:
        """The recording of ``call_id`` (``call_id`` already checked to be a plain name): a
        moved call's joined one (``joiner.whole_name``) first."""
        for name in ("{}.whole.{}", "{}.{}"):
            for fmt in FORMATS:
                path = self.directory / name.format(call_id, fmt)
                if path.is_file():
                    return path
        return None

    async def sweep(self, cutoff: float) -> int:
        return await asyncio.to_thread(sweep_directory, self.directory, cutoff)

    async def close(self) -> None:
        return None


class S3Storage:
    """An S3-compatible bucket, through aiobotocore; one client per worker, opened on first use."""

    def __init__(self, settings: S3Settings, spool: Path, url_ttl_s: float) -> None:
        self._settings = settings
        self._spool = spool
        self._ttl = int(url_ttl_s)
        self.timeout_s = settings.timeout_s
        self._stack = contextlib.AsyncExitStack()
        self._client: Any = None
        self._lock = asyncio.Lock()

    async def _s3(self) -> Any:
        async with self._lock:
            if self._client is None:
                # botocore's data and aiobotocore cost a worker ~30 MB: only where S3 is used
                from aiobotocore.config import AioConfig
                from aiobotocore.session import get_session

                s = self._settings
                # one try per request: the upload queue retries, counts and backs off
                config = AioConfig(
                    connect_timeout=s.timeout_s,
                    read_timeout=s.timeout_s,
                    retries={"mode": "standard", "total_max_attempts": 1},
                )
                self._client = await self._stack.enter_async_context(
                    get_session().create_client(
                        "s3",
                        region_name=s.region,
                        endpoint_url=s.endpoint_url,
                        aws_access_key_id=s.access_key_id,
                        aws_secret_access_key=s.secret_access_key,
                        config=config,
                    )
                )
            return self._client

    def key(self, name: str) -> str:
        return f"{self._settings.prefix}{name}"

    async def put(self, path: Path) -> None:
        """Upload the finished file at ``path`` (one try; raises what went wrong)."""
        s3 = await self._s3()
        content_type = CONTENT_TYPES.get(path.suffix.lstrip("."), "application/octet-stream")
        with path.open("rb") as body:  # streamed from the file, not read into memory
            await s3.put_object(
                Bucket=self._settings.bucket,
                Key=self.key(path.name),
                Body=body,
                ContentType=content_type,
            )

    async def url(self, name: str) -> str:
        """A presigned link to the stored ``name`` that works for ``url_ttl_s``."""
        s3, key = await self._s3(), self.key(name)
        url: str = await s3.generate_presigned_url(
            "get_object", Params={"Bucket": self._settings.bucket, "Key": key}, ExpiresIn=self._ttl
        )
        return url

    async def sweep(self, cutoff: float) -> int:
        """Delete old objects under the prefix, and spooled files not uploaded by then."""
        s3, bucket = await self._s3(), self._settings.bucket
        removed = await asyncio.to_thread(sweep_directory, self._spool, cutoff)
        paginator = s3.get_paginator("list_objects_v2")
        async for page in paginator.paginate(Bucket=bucket, Prefix=self._settings.prefix):
            old = [
                {"Key": item["Key"]}
                for item in page.get("Contents", [])
                if item["LastModified"].timestamp() < cutoff
            ]
            if old:
                await s3.delete_objects(Bucket=bucket, Delete={"Objects": old, "Quiet": True})
                removed += len(old)
        return removed

    async def close(self) -> None:
        await self._stack.aclose()
        self._client = None
