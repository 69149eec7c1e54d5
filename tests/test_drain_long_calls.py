"""Drain does not cut calls: SIGTERM with live calls, on a real ``telephony-edge serve``.

With ``server.drain_grace_s`` left at its default, a draining worker waits for
its live calls up to their own maximum (``calls.max_duration_s``). Two Twilio
calls are live when the edge gets SIGTERM; it stops taking calls (``/readyz``
503) and then:

- the first caller talks on for longer than the old fixed grace (30 s) and hangs
  up: ``user-ended``, not cut;
- the second reaches its maximum duration and ends by itself (``timeout``);
- each has exactly one end-of-call webhook, the drain ended no call, and the edge
  exits 0 as soon as the last call is over.

Time is real: ``calls.max_duration_s`` is 40 s here (rather than an hour) so the
second call ends within the test; the path is the one a 3600 s maximum takes.
The Twilio REST stand-in and the webhook receiver are ``test_lifecycle_serve``'s.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from telephony_edge.config import DRAIN_MARGIN_S
from tests import test_lifecycle_serve as lifecycle
from tests.conftest import ServeProcess, start_serve_process, stop_serve_process, wait_for
from tests.test_lifecycle_serve import Outside, answered, log_problems
from tests.twilio.harness import CALLER, LOCAL_NUMBER, serve_call

outside = lifecycle.outside  # the module-scoped Twilio REST stand-in and webhook receiver

MAX_DURATION_S = 40.0
OLD_GRACE_S = 30.0  # server.drain_grace_s's default before drain waited for calls
TALK_ON_S = OLD_GRACE_S + 3  # the first caller hangs up this long after SIGTERM


def drain_config() -> dict[str, Any]:
    config = lifecycle.lifecycle_config()
    config["server"] = {}  # drain_grace_s: the default
    config["calls"] = {"max_duration_s": MAX_DURATION_S, "inactivity_timeout_s": 120}
    return config


@pytest.fixture(name="session")
async def fixture_session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def talking_call(
    edge: ServeProcess, outside: Outside, session: aiohttp.ClientSession
) -> tuple[Any, str, asyncio.Task[None]]:
    """A call Twilio's REST API knows, its caller sending audio at real time until stopped."""
    call = serve_call(edge.base_url, session)
    outside.fake.add_call(call.call_sid, to=LOCAL_NUMBER, from_=CALLER)
    stream = await answered(call)
    await call.open_stream(stream)
    talking = asyncio.create_task(call.stream_until_quiet(until=lambda r: False, max_s=120))
    await wait_for(lambda: call.result.frames_received > 0, 5)
    return call, stream.parameters["call_id"], talking


async def test_sigterm_waits_for_live_calls_which_end_by_themselves(
    outside: Outside, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    edge = start_serve_process(drain_config(), tmp_path)
    loop = asyncio.get_running_loop()
    try:
        first, first_id, first_talking = await talking_call(edge, outside, session)
        second, second_id, second_talking = await talking_call(edge, outside, session)
        started = loop.time()
        edge.process.send_signal(signal.SIGTERM)
        signalled = loop.time()
        await wait_for(lambda: '"msg": "draining"' in edge.log, 5)
        async with session.get(edge.base_url + "/readyz") as resp:
            assert resp.status == 503

        # past the old fixed grace both calls are still up (the edge closes the stream
        # of a call it ends) and nothing has been hung up through Twilio's API
        await asyncio.sleep(TALK_ON_S - (loop.time() - signalled))
        assert not first.ws.closed and not second.ws.closed
        assert not outside.fake.calls[first.call_sid].updates
        assert not outside.fake.calls[second.call_sid].updates
        assert edge.process.poll() is None

        first_talking.cancel()
        await asyncio.gather(first_talking, return_exceptions=True)
        await first.stop()
        assert (await outside.exactly_one_webhook(first_id))["call_status"] == "user-ended"

        # the second ends at its maximum duration, by itself; then the edge exits 0
        assert await second.wait_closed(MAX_DURATION_S - (loop.time() - started) + 10)
        second_talking.cancel()
        await asyncio.gather(second_talking, return_exceptions=True)
        await second.finish()
        assert (await outside.exactly_one_webhook(second_id))["call_status"] == "timeout"
        while edge.process.poll() is None:
            assert loop.time() - started < MAX_DURATION_S + 20, "the edge did not exit"
            await asyncio.sleep(0.1)
        assert edge.process.returncode == 0
        assert '"calls_ended_by_drain": 0' in edge.log, edge.log[-2000:]
        assert f'"grace_s": {MAX_DURATION_S + DRAIN_MARGIN_S}' in edge.log
        assert not log_problems(edge.log), "\n".join(log_problems(edge.log)[:5])
    finally:
        stop_serve_process(edge)
