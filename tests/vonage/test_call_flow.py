"""Whole calls: simulator (as Vonage) → edge → built-in agent core, over real sockets."""

from __future__ import annotations

import audioop

import aiohttp
import pytest

from telephony_edge.calls.record import CallState, CallStatus
from telephony_edge.vonage.simulator import simulate_call, split_frames
from tests.conftest import read_wav, wait_for
from tests.vonage.harness import CALLER, LOCAL_NUMBER, SECRET, VonageEdge


def voiced_seconds(pcm: bytes) -> float:
    """Seconds of 16 kHz PCM16 above about -40 dBFS."""
    return sum(
        0.02 for i in range(0, len(pcm) - 639, 640) if audioop.rms(pcm[i : i + 640], 2) > 300
    )


@pytest.mark.both_loops
async def test_call_greeting_echo_barge_in_dtmf_and_caller_hangup(
    vonage_edge: VonageEdge, session: aiohttp.ClientSession
) -> None:
    speech = read_wav("speech_order.wav")
    speech_s = voiced_seconds(speech)
    call = vonage_edge.call(session)
    await call.post_answer()
    answer = call.result.answer
    assert answer is not None and answer.websocket is not None
    call_id = answer.websocket.headers["call_id"]
    assert await call.post_event("answered") == 204
    await call.open_socket(answer.websocket)
    # 0.5 s of silence (the greeting starts), then the caller talks over it, and
    # presses 5 while talking (the demo core logs it; no end or transfer)
    await call.stream_audio([], silence_after_s=0.5)
    await call.stream_audio(split_frames(speech), silence_after_s=0.2, dtmf=[(0.3, "5")])
    await call.silence_until(lambda _: call.result.frames_received * 0.02 > speech_s + 0.5, 10)
    await call.hang_up()
    result = call.result
    summary = result.summary()

    # the greeting was heard at once, at real time, in exact 640-byte binary frames
    assert result.first_audio_s is not None and result.first_audio_s < 1.0, summary
    assert result.odd_frames == 0, summary
    # the edge leads Vonage's buffer by vonage.playout_lead_ms (200) at a talkspurt's start
    assert result.overflow_frames == 0 and 0.18 < result.max_buffered_s < 0.3, summary
    # barge-in: the edge sent Vonage's clear soon after the caller's first word
    assert result.clears >= 1, summary
    assert 0.5 < result.clear_times[0] < 1.6, summary
    # caller audio reached the agent: the echo came back, about as long as the speech
    assert voiced_seconds(result.heard_pcm) > speech_s * 0.7, summary
    assert result.events_posted == [("answered", 204), ("completed", 204)]

    # the caller hung up: user-ended, and the end-of-call webhook goes out once
    service = vonage_edge.services.call_service
    await wait_for(lambda: service.manager.get(call_id) is None, 5)
    record = await service.get(call_id)
    assert record is not None
    assert record.state is CallState.ENDED and record.call_status is CallStatus.USER_ENDED
    [payload] = await vonage_edge.crm.wait(1)
    assert payload["call_id"] == call_id and payload["call_status"] == "user-ended"
    assert payload["voip"]["provider"] == "vonage"
    assert payload["voip"]["provider_call_id"] == call.uuid
    assert payload["voip"]["from"] == CALLER and payload["voip"]["to"] == LOCAL_NUMBER


async def test_simulate_call_lets_the_greeting_finish_then_hears_the_echo(
    vonage_edge: VonageEdge, session: aiohttp.ClientSession
) -> None:
    """What ``simulate vonage`` does: the greeting, then the caller speaks, then the echo."""
    speech = read_wav("speech_order.wav")
    result = await simulate_call(
        vonage_edge.base,
        to=LOCAL_NUMBER,
        from_=CALLER,
        audio=speech,
        signature_secret=SECRET,
        session=session,
        quiet_s=0.5,
    )
    summary = result.summary()
    assert result.outcome == "connected" and result.clears == 0, summary
    assert result.overflow_frames == 0 and result.odd_frames == 0, summary
    assert voiced_seconds(result.heard_pcm) > 1.4 + voiced_seconds(speech) * 0.7, summary
    assert result.events_posted == [("answered", 204), ("completed", 204)]
    [payload] = await vonage_edge.crm.wait(1)
    assert payload["call_status"] == "user-ended"
