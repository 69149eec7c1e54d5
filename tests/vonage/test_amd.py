"""Vonage's advanced machine detection: asked for (``detect_beep``) on the outbound call,
its signed events (``machine``, then ``sub_state: beep_start``) decide what the edge does."""

from __future__ import annotations

import json
from typing import Any

import aiohttp

from telephony_edge.vonage.simulator import SimulatedVonageCall, split_frames
from tests.conftest import read_wav
from tests.vonage.fake_voice_api import FakeVoiceApi
from tests.vonage.harness import API_KEY, CALLER, LOCAL_NUMBER, SECRET, VonageEdge
from tests.vonage.test_voice_api import (  # noqa: F401  (fixtures)
    fixture_api_edge,
    fixture_fake_api,
    fixture_keys,
)


async def outbound(
    edge: VonageEdge,
    fake_api: FakeVoiceApi,
    session: aiohttp.ClientSession,
    voicemail: dict[str, Any],
) -> SimulatedVonageCall:
    """Place a call with detection on; Vonage answers it and connects the socket."""
    body = {
        "agent_id": "echo",
        "from_phone": LOCAL_NUMBER,
        "to_phone": CALLER,
        "agent_config": {"voicemail": {"detect": True, **voicemail}},
        "metadata": {"name": "Ada"},
    }
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with session.post(edge.base + "/start_outbound_call", json=body, headers=headers) as r:
        assert r.status in (200, 201), await r.text()
    [fake] = fake_api.calls.values()
    assert fake.machine_detection == {"behavior": "continue", "mode": "detect_beep"}
    port = str(edge.port)
    call = SimulatedVonageCall(
        session,
        edge.base,
        to=CALLER,
        from_=LOCAL_NUMBER,
        signature_secret=SECRET,
        answer_path=fake.answer_url.split(port, 1)[1],
        event_path=fake.event_url.split(port, 1)[1],
        uuid=fake.uuid,
    )
    await call.post_answer()
    assert call.result.answer is not None and call.result.answer.websocket is not None
    await call.open_socket(call.result.answer.websocket)
    return call


def greeting(seconds: float) -> list[bytes]:
    return split_frames(read_wav("amd/voicemail_beep.wav")[: round(seconds * 32000)])


async def test_machine_then_beep_start_gets_the_message_then_voicemail_message(
    api_edge: VonageEdge, fake_api: FakeVoiceApi, session: aiohttp.ClientSession
) -> None:
    voicemail = {"action": "leave_message", "message": "Hi {name}, it is the clinic."}
    call = await outbound(api_edge, fake_api, session, voicemail)
    await call.stream_audio(greeting(1.5))
    assert await call.post_event("machine") == 204  # a machine: wait for its beep
    await call.stream_audio(greeting(1.5))
    heard_before = call.result.frames_received
    assert await call.post_event("machine", sub_state="beep_start") == 204
    await call.silence_until(lambda _: False, 8)
    assert await call.wait_closed(5), "the edge hangs up once the message is left"
    await call.finish()
    assert call.result.frames_received - heard_before > 100  # the 2.4 s message
    [fake] = fake_api.calls.values()
    assert fake.updates == [{"action": "hangup"}]
    [payload] = await api_edge.crm.wait(1)
    assert payload["call_status"] == "voicemail-message"
    amd = payload["voip"]["amd"]
    assert (amd["result"], amd["beep"], amd["source"]) == ("machine", True, "vonage")
    assert 1000 <= amd["decided_after_ms"] < 3000  # the machine event, after 1.5 s of audio
    assert json.loads(payload["chat"])[-1]["content"] == "Hi Ada, it is the clinic."


async def test_a_machine_with_hangup_is_voicemail_hangup_and_bad_events_are_400(
    api_edge: VonageEdge, fake_api: FakeVoiceApi, session: aiohttp.ClientSession
) -> None:
    call = await outbound(api_edge, fake_api, session, {"action": "hangup"})
    await call.stream_audio(greeting(0.5))
    assert await call.post_event("machine", sub_state="boop") == 400
    assert await call.post_event("machine") == 204
    assert await call.wait_closed(5)
    await call.finish()
    [payload] = await api_edge.crm.wait(1)
    assert payload["call_status"] == "voicemail-hangup"
    assert payload["voip"]["amd"]["source"] == "vonage"
