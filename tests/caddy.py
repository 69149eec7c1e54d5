"""Caddy as the reverse proxy in front of the edge, for the tests (as ``deploy/Caddyfile`` runs it).

:func:`start_caddy` writes a Caddyfile with one plain-HTTP site on a free
port of 127.0.0.1 whose ``reverse_proxy`` goes to the edge, starts ``caddy
run`` in the foreground (no admin endpoint, no automatic HTTPS, its data in
the test's folder) and waits until the site answers. Caddy connects to the
edge from 127.0.0.1 and, as it does by default, writes the address it took
the request from into ``X-Forwarded-For``, replacing what the client sent.
With more ``upstreams`` and ``balance`` lines (``lb_policy``, health checks) it
balances several workers, as ``deploy/Caddyfile`` does.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from tests.conftest import free_port, require_binary

CADDYFILE = """{{
\tadmin off
\tauto_https off
}}
http://127.0.0.1:{port} {{
\treverse_proxy {upstreams} {{
{extra}\t}}
}}
"""


@dataclass
class Caddy:
    process: asyncio.subprocess.Process
    port: int
    log: Path

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@contextlib.asynccontextmanager
async def caddy(
    directory: Path,
    edge_port: int,
    *,
    header_up: Sequence[str] = (),
    upstreams: Sequence[int] = (),
    balance: Sequence[str] = (),
    port: int | None = None,
) -> AsyncIterator[Caddy]:
    """Caddy on 127.0.0.1 (``port``, else a free one) proxying to the edge and to the
    ``upstreams`` after it; ``header_up`` and ``balance``: lines of its reverse_proxy block."""
    binary = require_binary("caddy", "apt-get install -y caddy")
    port = port or free_port()
    extra = "".join(f"\t\theader_up {line}\n" for line in header_up)
    extra += "".join(f"\t\t{line}\n" for line in balance)
    targets = " ".join(f"127.0.0.1:{p}" for p in (edge_port, *upstreams))
    config = directory / "Caddyfile"
    config.write_text(CADDYFILE.format(port=port, upstreams=targets, extra=extra))
    log = directory / "caddy.log"
    env = {**os.environ, "XDG_DATA_HOME": str(directory), "XDG_CONFIG_HOME": str(directory)}
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            binary, "run", "--config", str(config), "--adapter", "caddyfile",
            stdout=out, stderr=out, env=env,
        )  # fmt: skip
    proxy = Caddy(process, port, log)
    try:
        await _until_up(proxy)
        yield proxy
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 5)
            except TimeoutError:
                process.kill()
                await process.wait()


async def _until_up(proxy: Caddy) -> None:
    async with aiohttp.ClientSession() as http:
        for _ in range(200):
            assert proxy.process.returncode is None, proxy.log.read_text()
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(proxy.url("/healthz")) as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.05)
    raise AssertionError(f"caddy did not come up:\n{proxy.log.read_text()}")
