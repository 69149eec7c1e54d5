"""Twilio's AMD callback lands on worker A while the call's media runs on worker B.

Two real ``telephony-edge serve`` workers on one Redis (``tests/test_multiworker.py``);
the stored agent has ``voicemail: {detect: true, action: hangup}``. The result reaches
the owner as a control message, and the owner ends the call ``voicemail-hangup``.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp

from tests.conftest import wait_for
from tests.test_lifecycle_serve import AUTH, CALLEE, Outside
from tests.test_multiworker import Workers, fixture_session, on, outside, stop_talking
from tests.twilio.harness import OUTBOUND_NUMBER, answered, callee_answers

__all__ = ["fixture_session", "outside"]  # fixtures


async def test_an_amd_result_on_a_ends_the_call_streaming_on_b_voicemail_hangup(
    redis_server: Any, outside: Outside, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    workers = Workers(redis_server.url, tmp_path, voicemail={"detect": True, "action": "hangup"})
    try:
        a, b = workers.a, workers.b
        body = {"from_phone": OUTBOUND_NUMBER, "to_phone": CALLEE, "agent_id": "demo"}
        async with session.post(a.base_url + "/start_outbound_call", json=body, headers=AUTH) as r:
            assert r.status == 200, await r.text()
            placed = await r.json()
        call_id, sid = placed["call_id"], placed["provider_call_id"]
        [callback] = outside.fake.calls[sid].fields["AsyncAmdStatusCallback"]
        assert callback == f"{a.base_url}/twilio/amd?call_id={call_id}"

        call = callee_answers(a.base_url, session, sid, call_id, CALLEE)
        stream = await answered(call)
        await call.open_stream(on(b, stream))  # the media lands on B
        talking = asyncio.create_task(call.stream_until_quiet(until=lambda r: False, max_s=30))
        await wait_for(lambda: call.result.frames_received > 0, 5)

        assert await call.post_amd_result(callback, "machine_end_silence", 5200) == 204  # on A
        assert await call.wait_closed(5), "B hangs up the machine"
        await stop_talking(talking)
        payload = await outside.exactly_one_webhook(call_id)
        assert payload["call_status"] == "voicemail-hangup"
        assert payload["voip"]["amd"] == {
            "result": "machine",
            "beep": False,
            "source": "twilio",
            "decided_after_ms": 5200,
        }
        assert [u.get("Status") for u in outside.fake.calls[sid].updates] == [["completed"]]
        a.assert_healthy()
        b.assert_healthy()
    finally:
        workers.stop()
