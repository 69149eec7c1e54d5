"""Health, readiness, metrics, and the SIGTERM drain of a real `telephony-edge serve`."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from typing import Any

import aiohttp
import pytest
import uvloop

from telephony_edge import metrics
from telephony_edge.app import DEMO_AGENT_PATH
from tests.conftest import free_port


async def _wait_up(url: str, proc: asyncio.subprocess.Process) -> None:
    async with aiohttp.ClientSession() as http:
        for _ in range(100):
            assert proc.returncode is None, "the service exited at start-up"
            try:
                async with http.get(url) as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError("the service did not come up")


async def test_serve_answers_health_metrics_and_drains_on_sigterm() -> None:
    port = free_port()
    env = {**os.environ, "TELEPHONY_EDGE_SERVER__DRAIN_GRACE_S": "5"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "telephony_edge",
        "serve",
        "--port",
        str(port),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        await _wait_up(f"{base}/healthz", proc)
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/readyz") as resp:
                assert resp.status == 200
                assert (await resp.json())["ready"] is True
            async with http.get(f"{base}/metrics") as resp:
                text = await resp.text()
                assert resp.status == 200
                assert "telephony_edge_calls_active" in text
                assert "telephony_edge_relay_latency_seconds" in text
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 15) == 0
        out = (await proc.stdout.read()).decode() if proc.stdout else ""
        err = (await proc.stderr.read()).decode() if proc.stderr else ""
        assert f"{base}/healthz" in out
        assert '"msg": "draining"' in err and '"msg": "drained"' in err
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_async_tests_run_on_uvloop_the_loop_serve_runs() -> None:
    """Unless marked ``both_loops``, a test runs on uvloop only: what ships."""
    assert isinstance(asyncio.get_running_loop(), uvloop.Loop)


@pytest.mark.both_loops
async def test_both_loops_also_runs_on_asyncios_own_loop(request: pytest.FixtureRequest) -> None:
    loop = asyncio.get_running_loop()
    if request.node.name.endswith("[asyncio]"):
        assert not isinstance(loop, uvloop.Loop)
    else:
        assert request.node.name.endswith("[uvloop]") and isinstance(loop, uvloop.Loop)


async def test_the_embedded_demo_agent_core_opens_sessions_for_its_own_edge_only(
    make_edge: Any,
) -> None:
    """It shares the public listener: a stranger who finds the path gets 403, counted."""
    edge = await make_edge()
    bad = metrics.BAD_INPUT.labels(source="demo-agent")
    before = bad._value.get()
    async with aiohttp.ClientSession() as http:
        for query in ("", "?key=", "?key=guess"):
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await http.ws_connect(edge.url(DEMO_AGENT_PATH + query))
            assert refused.value.status == 403
        own = edge.services.call_service.demo_agent_url
        assert own is not None and own.startswith(f"ws://127.0.0.1:{edge.server.port}")
        async with http.ws_connect(own) as ws:  # what the edge's calls connect to
            assert not ws.closed
    assert bad._value.get() == before + 3
