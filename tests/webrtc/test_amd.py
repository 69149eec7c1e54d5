"""Answering-machine detection on a WebRTC call: an aiortc client plays the fixtures.

WebRTC calls are inbound, so the offer's ``agent_config`` turns detection on
for them (``voicemail.inbound``); the edge's own detector listens.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
from aiortc import RTCSessionDescription

from tests.conftest import Edge, Receiver, read_wav, wait_for
from tests.webrtc.test_offer import Client, Speech, edge, post_offer

__all__ = ["edge"]  # the fixture, shared with the offer tests


async def call(edge: Edge, wav: str, voicemail: dict[str, Any]) -> tuple[Client, str]:
    client = Client()
    client.mic.source = Speech(read_wav(wav))
    offer = await client.offer()
    body = {
        "agent_id": "echo",
        "agent_config": {"voicemail": {"detect": True, "inbound": True, **voicemail}},
        "offer": offer,
    }
    status, answer = await post_offer(edge, body)
    assert status == 200, answer
    await client.pc.setRemoteDescription(
        RTCSessionDescription(**{k: answer[k] for k in ("sdp", "type")})
    )
    return client, str(answer["call_id"])


async def test_a_voicemail_greeting_is_hung_up_on_voicemail_hangup(
    edge: Edge, receiver: Receiver
) -> None:
    client, call_id = await call(edge, "amd/voicemail_beep.wav", {"action": "hangup"})
    try:
        await wait_for(lambda: receiver.received, within=15)  # the edge hangs up by itself
    finally:
        await client.close()
    [payload] = receiver.received
    assert payload["call_id"] == call_id
    assert payload["call_status"] == "voicemail-hangup", payload
    amd = payload["voip"]["amd"]
    assert (amd["result"], amd["beep"], amd["source"]) == ("machine", False, "edge")
    assert amd["decided_after_ms"] < 3500
    assert payload["duration"] < 8  # hung up during the greeting, not after it


async def test_a_person_is_human_and_the_call_goes_on(
    edge: Edge, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="telephony_edge.agent.demo")
    client, _ = await call(edge, "amd/human_hello.wav", {"action": "hangup"})
    try:
        # the agent core is told, and the caller hears it (greeting, then the echo)
        await wait_for(lambda: "amd_result {'result': 'human'" in caplog.text, within=15)
        await wait_for(lambda: client.voiced * 0.02 > 1.0, within=15)
        assert edge.services.calls.active == 1
    finally:
        await client.close()
    await wait_for(lambda: receiver.received, within=10)
    [payload] = receiver.received
    assert payload["call_status"] == "user-ended"
    assert payload["voip"]["amd"]["result"] == "human"


async def test_a_bad_voicemail_setting_is_400(edge: Edge) -> None:
    client = Client()
    try:
        offer = await client.offer()
        body = {"agent_id": "echo", "agent_config": {"voicemail": {"action": "x"}}, "offer": offer}
        status, answer = await post_offer(edge, body)
    finally:
        await client.close()
    assert status == 400 and "voicemail" in answer["error"], answer
