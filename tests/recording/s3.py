"""The recording tests' S3: moto's server in a process of its own, and a proxy that fails uploads.

:class:`FaultyS3` sits in front of the S3 server on a real socket, as a
load balancer would, and passes every request through unchanged, except the
uploads (``PUT`` of an object) it is told to fail: ``"500"`` answers S3's
own ``InternalError`` (after reading the body, as S3 does), ``"hang"``
reads the request and never answers (the client's read timeout is what
ends it). ``faults`` are used one per upload, in order; ``always`` fails
every upload until it is set back to None.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
from aiobotocore.session import get_session
from aiohttp import web

from tests.conftest import free_port

BUCKET = "edge-recordings"
ACCESS = {"access_key_id": "test-access-key", "secret_access_key": "test-secret-key"}
KEYS = {f"aws_{name}": value for name, value in ACCESS.items()}
INTERNAL_ERROR = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>InternalError</Code>'
    b"<Message>We encountered an internal error. Please try again.</Message></Error>"
)
#: headers that belong to one hop (aiohttp frames each side's body itself)
HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "upgrade"}


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    """moto's S3-compatible server on 127.0.0.1 in a process of its own (its memory is not
    the test's: a test measures the recorder's), never the cloud; its URL."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert server.poll() is None, "moto's server exited"
                assert time.monotonic() < deadline, "moto's server did not listen"
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(10)


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    with moto_server() as url:
        yield url


@pytest.fixture
async def moto_bucket(moto_url: str) -> AsyncIterator[Any]:
    """An empty bucket on moto's server, and a client to look into it."""
    async with get_session().create_client(
        "s3", region_name="us-east-1", endpoint_url=moto_url, **KEYS
    ) as s3:
        await s3.create_bucket(Bucket=BUCKET)
        yield s3
        listed = await s3.list_objects_v2(Bucket=BUCKET)
        for item in listed.get("Contents", []):
            await s3.delete_object(Bucket=BUCKET, Key=item["Key"])
        await s3.delete_bucket(Bucket=BUCKET)


async def stored(s3: Any) -> dict[str, bytes]:
    """The bucket's objects by key."""
    listed = await s3.list_objects_v2(Bucket=BUCKET)
    objects = {}
    for item in listed.get("Contents", []):
        got = await s3.get_object(Bucket=BUCKET, Key=item["Key"])
        async with got["Body"] as body:
            objects[item["Key"]] = await body.read()
    return objects


class FaultyS3:
    """An HTTP proxy on 127.0.0.1 in front of ``upstream`` that fails uploads as told."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.faults: list[str] = []
        self.always: str | None = None
        self.injected: list[str] = []
        self.uploads = 0
        self._released = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self.url = ""

    async def __aenter__(self) -> FaultyS3:
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=1)
        await self._runner.setup()
        port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self._session = aiohttp.ClientSession(auto_decompress=False)
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._released.set()
        assert self._runner is not None and self._session is not None
        await self._runner.cleanup()
        await self._session.close()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        is_upload = request.method == "PUT" and request.path.strip("/").count("/") >= 1
        if is_upload:
            self.uploads += 1
            fault = self.always or (self.faults.pop(0) if self.faults else None)
            if fault is not None:
                self.injected.append(fault)
                if fault == "500":
                    return web.Response(
                        status=500, body=INTERNAL_ERROR, content_type="application/xml"
                    )
                assert fault == "hang", fault
                await self._released.wait()  # the client gives up first
                raise ConnectionResetError
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP}
        async with self._session.request(
            request.method, self.upstream + request.path_qs, headers=headers, data=body
        ) as upstream:
            data = await upstream.read()
            kept = {k: v for k, v in upstream.headers.items() if k.lower() not in HOP}
            return web.Response(status=upstream.status, headers=kept, body=data)
