"""Twilio's own answering-machine detection: asked for on the outbound call, its signed
asynchronous result (the simulator posts it) decides what the edge does."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
from prometheus_client import REGISTRY

from telephony_edge.twilio.simulator import SimulatedCall, encode_payloads
from tests.conftest import read_wav, wait_for
from tests.test_api import answer, post, start_outbound
from tests.twilio.harness import TwilioEdge, pcm16_to_ulaw8k


async def outbound(
    edge: TwilioEdge, session: aiohttp.ClientSession, voicemail: dict[str, Any]
) -> tuple[str, SimulatedCall, str]:
    """Place a call with detection on, answer it; return (call_id, callee, AMD callback URL)."""
    status, body = await start_outbound(
        edge, session, agent_config={"voicemail": {"detect": True, **voicemail}}
    )
    assert status == 200, body
    call_id = body["call_id"]
    [request] = edge.fake.requests
    form = request.form
    assert form["MachineDetection"] == ["DetectMessageEnd"]
    assert form["AsyncAmd"] == ["true"]
    assert form["AsyncAmdStatusCallbackMethod"] == ["POST"]
    [callback] = form["AsyncAmdStatusCallback"]
    assert callback == f"{edge.base}/twilio/amd?call_id={call_id}"
    return call_id, await answer(edge, session, call_id), callback


def greeting(seconds: float) -> list[bytes]:
    pcm = read_wav("amd/voicemail_beep.wav")[: round(seconds * 32000)]
    return encode_payloads(pcm16_to_ulaw8k(pcm))


async def test_machine_end_beep_gets_the_message_then_voicemail_message(
    twilio_edge: TwilioEdge, session: aiohttp.ClientSession
) -> None:
    voicemail = {"action": "leave_message", "message": "Hello {userName}, call us back."}
    _, call, callback = await outbound(twilio_edge, session, voicemail)
    await call.stream_audio(greeting(3.0))
    heard_before = call.result.frames_received
    assert await call.post_amd_result(callback, "machine_end_beep", 9120) == 204
    await call.stream_until_quiet(until=lambda r: False, max_s=8)
    assert await call.wait_closed(5), "the edge hangs up once the message is left"
    await call.finish()
    assert call.result.frames_received - heard_before > 100  # the 2.4 s message
    [twilio_call] = twilio_edge.fake.calls.values()
    assert twilio_call.status == "completed"  # hung up through the REST API
    [payload] = await twilio_edge.crm.wait(1)
    assert payload["call_status"] == "voicemail-message"
    assert payload["voip"]["amd"] == {
        "result": "machine",
        "beep": True,
        "source": "twilio",
        "decided_after_ms": 9120,
    }
    chat = json.loads(payload["chat"])
    assert chat[-1]["content"] == "Hello Ada, call us back."


async def test_a_machine_with_hangup_is_voicemail_hangup(
    twilio_edge: TwilioEdge, session: aiohttp.ClientSession
) -> None:
    labels = {"source": "twilio", "result": "machine"}
    counted = REGISTRY.get_sample_value("telephony_edge_amd_results_total", labels) or 0.0
    _, call, callback = await outbound(twilio_edge, session, {"action": "hangup"})
    await call.stream_audio(greeting(1.0))
    assert await call.post_amd_result(callback, "machine_end_other", 4100) == 204
    assert await call.wait_closed(5)
    await call.finish()
    [payload] = await twilio_edge.crm.wait(1)
    assert payload["call_status"] == "voicemail-hangup"
    assert payload["voip"]["amd"]["source"] == "twilio"
    assert REGISTRY.get_sample_value("telephony_edge_amd_results_total", labels) == counted + 1


async def test_a_human_keeps_the_call_and_bad_callbacks_are_refused(
    twilio_edge: TwilioEdge, session: aiohttp.ClientSession
) -> None:
    call_id, call, callback = await outbound(twilio_edge, session, {"action": "hangup"})
    await call.stream_audio(greeting(0.5))
    # unsigned: 403; an AnsweredBy Twilio does not send: 400; neither touches the call
    assert await call.post_amd_result(callback, "machine_end_beep", 10, sign=False) == 403
    assert await call.post_amd_result(callback, "robot", 10) == 400
    assert await call.post_amd_result(callback, "human", 2300) == 204
    await call.stream_audio([], silence_after_s=0.5)
    service = twilio_edge.services.call_service
    assert service.manager.get(call_id) is not None  # still up: a person
    status, _ = await post(session, f"{twilio_edge.base}/calls/{call_id}/hangup")
    assert status == 200
    assert await call.wait_closed(5)
    await call.finish()
    await wait_for(lambda: service.manager.get(call_id) is None, 5)
    [payload] = await twilio_edge.crm.wait(1)
    assert payload["call_status"] == "api-ended"
    assert payload["voip"]["amd"] == {
        "result": "human",
        "beep": False,
        "source": "twilio",
        "decided_after_ms": 2300,
    }
