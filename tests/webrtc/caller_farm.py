"""Resuming WebRTC callers in a process of their own, driven by a test over stdin/stdout.

    python -m tests.webrtc.caller_farm --calls 5 URL_A URL_B

places ``--calls`` calls on the first URL (:class:`~tests.webrtc.resuming_caller.ResumingCaller`,
a few set up at once), prints ``{"placed": [call ids]}`` once the agent is heard in
each, then answers each line read: ``status`` → ``{"back": n, "failed": [...]}`` (calls
that have heard the agent on a later connection), ``hangup`` → every call says ``end``
and the report is printed, ``{"callers": [{call_id, ports, urls, reasons, refusals,
failed}]}``, and the process exits.

Why a process: a test's own event loop that carries twenty peer connections (their
audio decoded, their DTLS handshakes) and the agent core runs late on a busy machine,
and so would every caller's re-offer. Real callers are each in their own process; a few
processes of five come closer to that and use both cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

import aiohttp
import uvloop

from tests.conftest import wait_for
from tests.webrtc.resuming_caller import ResumingCaller

STARTING = 5  # calls set up at once
HEARD_FRAMES = 10  # frames of the agent's voice before a call counts as placed


def report(caller: ResumingCaller) -> dict[str, Any]:
    return {
        "call_id": caller.call_id,
        "ports": [c.port for c in caller.connections],
        "urls": [c.url for c in caller.connections],
        "reasons": caller.reasons,
        "refusals": caller.refusals,
        "failed": caller.failed,
    }


def back(caller: ResumingCaller) -> bool:
    return len(caller.connections) > 1 and caller.client.voiced > 0


def say(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


async def main(calls: int, urls: list[str]) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    gate = asyncio.Semaphore(STARTING)
    async with aiohttp.ClientSession() as http:
        callers = [ResumingCaller(urls, http) for _ in range(calls)]

        async def start(caller: ResumingCaller) -> None:
            async with gate:
                await caller.start()

        try:
            await asyncio.gather(*(start(caller) for caller in callers))
            await wait_for(lambda: all(c.client.voiced > HEARD_FRAMES for c in callers), 30)
            say({"placed": [caller.call_id for caller in callers]})
            while line := (await reader.readline()).decode().strip():
                if line == "status":
                    failed = [caller.failed for caller in callers if caller.failed]
                    say({"back": sum(back(caller) for caller in callers), "failed": failed})
                elif line == "hangup":
                    await asyncio.gather(*(caller.hang_up() for caller in callers))
                    say({"callers": [report(caller) for caller in callers]})
                    return
        finally:
            await asyncio.gather(*(caller.close() for caller in callers))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, required=True)
    parser.add_argument("urls", nargs="+")
    args = parser.parse_args()
    uvloop.run(main(args.calls, args.urls))
