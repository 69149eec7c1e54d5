"""A WebRTC caller in a process of its own, for a test to SIGKILL (no BYE, no DTLS close).

``python -m tests.webrtc.killable_caller OFFER_URL`` posts an offer (the
test client of ``test_offer``: speech, host candidates on 127.0.0.1),
connects, prints ``{"call_id": …}`` and waits to be killed.
"""

from __future__ import annotations

import asyncio
import json
import sys

from aiortc import RTCSessionDescription

from tests.webrtc.test_offer import API_KEY, Client


async def main(url: str) -> None:
    import aiohttp

    client = Client()
    connected = asyncio.Event()

    @client.pc.on("connectionstatechange")
    def _state() -> None:
        if client.pc.connectionState == "connected":
            connected.set()

    offer = await client.offer()
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            url,
            json={"agent_id": "echo", "offer": offer},
            headers={"Authorization": f"Bearer {API_KEY}"},
        ) as resp,
    ):
        answer = await resp.json()
    await client.pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))
    await connected.wait()
    print(json.dumps({"call_id": answer["call_id"]}), flush=True)
    await asyncio.sleep(3600)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
