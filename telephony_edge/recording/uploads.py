"""Finished recordings uploaded to S3, each retried with back-off until it is stored.

A recording waiting for its upload is nothing but a claimed file in the
spool (``spool.py``), so a worker that restarts finds its queue again in
the directory: the sweep adopts the files no process holds and submits
them here. Each file is one task, and at most :data:`CONCURRENCY` upload at
once. An attempt that fails (the store answers an error, the connection
fails, a request times out after ``s3.timeout_s``, or the whole attempt
outlasts :func:`attempt_timeout`) is counted in
``telephony_edge_recording_upload_failures_total{reason}`` and made again
after the back-off (``recording.upload_backoff_s``, doubled each time up to
``upload_backoff_max_s``, ±20 %), for as long as the file is kept: the
retention sweep deletes what is older than ``retention_s``, uploaded or
not. Once stored, the file is deleted here.
"""

from __future__ import annotations

import asyncio
import logging

from telephony_edge import metrics
from telephony_edge.calls.dispatcher import RetryPolicy
from telephony_edge.recording.spool import Claim, Spool
from telephony_edge.recording.storage import S3Storage

log = logging.getLogger(__name__)

CONCURRENCY = 4
#: the slowest upload an attempt is given time for (2 Mbit/s), beyond ``s3.timeout_s``
MIN_RATE = 256 * 1024


def attempt_timeout(size: int, timeout_s: float) -> float:
    """How long one attempt at a ``size``-byte upload may take in all (a store that trickles)."""
    return timeout_s + size / MIN_RATE


def failure_reason(exc: BaseException) -> str:
    """The metric's ``reason``: timeout, http_5xx, http_4xx, network or other."""
    from botocore.exceptions import (  # type: ignore[import-untyped]  # only where S3 is used
        ClientError,
        ConnectionError,
        ConnectTimeoutError,
        HTTPClientError,
        ReadTimeoutError,
    )

    if isinstance(exc, TimeoutError | ReadTimeoutError | ConnectTimeoutError):
        return "timeout"
    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return "http_5xx" if status >= 500 else "http_4xx"
    if isinstance(exc, ConnectionError | HTTPClientError | OSError):
        return "network"
    return "other"


class UploadQueue:
    """The worker's uploads under way; :meth:`submit` one claimed file, get its link."""

    def __init__(self, storage: S3Storage, spool: Spool, retry: RetryPolicy) -> None:
        self._storage = storage
        self._spool = spool
        self._retry = retry
        self._slots = asyncio.Semaphore(CONCURRENCY)
        self._tasks: dict[str, asyncio.Task[bool]] = {}

    @property
    def pending(self) -> int:
        return len(self._tasks)

    def submit(self, claim: Claim) -> asyncio.Task[bool]:
        """Upload ``claim``'s file until it is stored, then delete it here: the task's result
        (False: the retention sweep deleted the file first)."""
        task = asyncio.create_task(self._upload(claim))
        name = claim.path.name
        self._tasks[name] = task
        metrics.RECORDING_UPLOADS_PENDING.set(len(self._tasks))

        def done(_: object) -> None:
            self._tasks.pop(name, None)
            metrics.RECORDING_UPLOADS_PENDING.set(len(self._tasks))

        task.add_done_callback(done)
        return task

    async def _upload(self, claim: Claim) -> bool:
        stored = False
        try:
            stored = await self._until_stored(claim)
        finally:  # stored: deleted here; else (gone, or a worker stopping) left as it is
            self._spool.release(claim, delete=stored)
        return stored

    async def _until_stored(self, claim: Claim) -> bool:
        attempt = 0
        while True:
            attempt += 1
            try:
                async with self._slots:
                    limit = attempt_timeout(claim.size, self._storage.timeout_s)
                    async with asyncio.timeout(limit):
                        await self._storage.put(claim.path)
            except FileNotFoundError:
                log.warning(
                    "recording not uploaded: the retention sweep deleted it: %s", claim.path
                )
                return False
            except Exception as exc:
                reason = failure_reason(exc)
                metrics.RECORDING_UPLOAD_FAILURES.labels(reason=reason).inc()
                delay = self._retry.delay(attempt)
                log.warning(
                    "recording upload failed (%s, attempt %d): %r; again in %.1f s",
                    reason,
                    attempt,
                    exc,
                    delay,
                    extra={"call_id": claim.path.stem},
                )
                await asyncio.sleep(delay)
                continue
            if attempt > 1:
                log.info(
                    "recording uploaded after %d attempts",
                    attempt,
                    extra={"call_id": claim.path.stem},
                )
            return True

    async def close(self) -> None:
        """Stop (a worker stopping): the files stay in the spool, for the next start."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
