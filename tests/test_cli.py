"""The command line: the stand-alone demo agent core answers the protocol on a real port."""

from __future__ import annotations

import asyncio
import json
import sys

import aiohttp

from tests.conftest import free_port


async def test_agent_core_command_serves_the_protocol() -> None:
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "telephony_edge", "agent-core", "--port", str(port)),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(100):
                try:
                    ws = await http.ws_connect(f"ws://127.0.0.1:{port}/agent")
                    break
                except aiohttp.ClientError:
                    await asyncio.sleep(0.1)
            else:
                raise AssertionError("agent-core did not come up")
            initiate = {"agent": {"agent_id": "a", "agent_config": {}}, "metadata": {}}
            await ws.send_str(json.dumps({"method": "initiate", "data": initiate}))
            first = await ws.receive(timeout=5)
            assert json.loads(first.data)["method"] == "onready"
            audio = await ws.receive(timeout=5)
            while audio.type is aiohttp.WSMsgType.TEXT:
                audio = await ws.receive(timeout=5)
            assert audio.type is aiohttp.WSMsgType.BINARY and len(audio.data) % 640 == 0
            await ws.close()
    finally:
        proc.terminate()
        await proc.wait()
