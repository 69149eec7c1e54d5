"""Whole calls: simulator (as Twilio) → edge → built-in agent core, over real sockets."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from telephony_edge.calls.record import CallState, CallStatus
from telephony_edge.twilio.simulator import (
    SimulatedCall,
    StreamInstruction,
    encode_payloads,
    parse_twiml,
    simulate_call,
)
from tests.conftest import read_wav, wait_for
from tests.twilio.harness import (
    ACCOUNT_SID,
    AUTH_TOKEN,
    CALLER,
    EU_NUMBER,
    LOCAL_NUMBER,
    TwilioEdge,
    pcm16_to_ulaw8k,
    voiced_runs,
    voiced_seconds,
)


@pytest.mark.both_loops
async def test_call_echo_barge_in_marks_and_caller_hangup(
    twilio_edge: TwilioEdge, session: aiohttp.ClientSession
) -> None:
    speech = read_wav("speech_order.wav")
    speech_s = voiced_seconds(pcm16_to_ulaw8k(speech))
    call = twilio_edge.call(session)
    stream = parse_twiml(await call.post_webhook()).stream
    assert stream is not None
    call_id = stream.parameters["call_id"]
    await call.open_stream(stream)
    # 0.5 s of silence (the greeting starts), then the caller talks over it
    silence = encode_payloads(b"\xff" * 4000)
    speech_payloads = encode_payloads(pcm16_to_ulaw8k(speech))
    await call.stream_audio(silence + speech_payloads, silence_after_s=0.2)
    await call.stream_until_quiet(until=lambda r: r.reply_frames * 0.02 > speech_s, max_s=10)
    await call.stop()
    result = call.result
    summary = result.summary()

    # agent audio reached the caller before they spoke: the greeting, at real time
    assert result.first_audio_s is not None and result.first_audio_s < 1.0, summary
    # barge-in: the agent core cleared and the edge sent Twilio a clear, soon after the
    # caller's first word (0.5 s of silence + 0.25 s of lead-in in the fixture)
    assert result.clears >= 1, summary
    assert 0.75 < result.clear_times[0] < 1.6, summary
    assert "barge-in: the edge cleared the agent's audio" in summary
    # caller audio reached the agent: the echo came back, about as long as the speech
    assert result.reply_frames * 0.02 > speech_s * 0.7, summary
    assert voiced_seconds(result.heard_ulaw) > speech_s * 0.7, summary
    # marks: the edge marks its audio, the simulator echoes them as Twilio does
    assert 0 < result.marks_echoed <= result.marks_received  # the last may still be playing
    assert result.late_frames == 0, summary
    # the edge leads Twilio's buffer by twilio.playout_lead_ms (200) at a talkspurt's start
    assert 0.18 < result.max_buffered_s < 0.3, summary

    # stop: the call ends as user-ended and the end-of-call webhook goes out
    service = twilio_edge.services.call_service
    await wait_for(lambda: service.manager.get(call_id) is None, 5)
    record = await service.get(call_id)
    assert record is not None
    assert record.state is CallState.ENDED and record.call_status is CallStatus.USER_ENDED
    [payload] = await twilio_edge.crm.wait(1)
    assert payload["call_id"] == call_id
    assert payload["call_status"] == "user-ended"
    assert payload["voip"]["provider"] == "twilio"
    assert payload["voip"]["provider_call_id"] == call.call_sid
    assert payload["voip"]["from"] == CALLER and payload["voip"]["to"] == LOCAL_NUMBER


async def test_the_simulated_caller_lets_the_greeting_finish_then_hears_the_echo(
    twilio_edge: TwilioEdge, session: aiohttp.ClientSession
) -> None:
    """What ``simulate twilio`` does by default: the README's chime, then the echo."""
    speech = pcm16_to_ulaw8k(read_wav("speech_order.wav"))
    result = await simulate_call(
        twilio_edge.base,
        to=LOCAL_NUMBER,
        from_=CALLER,
        audio_ulaw=speech,
        auth_token=AUTH_TOKEN,
        account_sid=ACCOUNT_SID,
        session=session,
        speak_after="greeting",
        quiet_s=0.5,
    )
    summary = result.summary()
    assert result.outcome == "streamed" and result.clears == 0, summary
    assert "barge-in" not in summary
    chime, *echo = voiced_runs(result.heard_ulaw)
    assert chime[1] - chime[0] > 1.4, summary  # the whole 1.5 s greeting
    assert result.spoke_at_s is not None and result.spoke_at_s > chime[1], summary
    assert echo and echo[0][0] > result.spoke_at_s, summary
    assert sum(end - start for start, end in echo) > voiced_seconds(speech) * 0.7, summary


async def connect_known_call(
    twilio_edge: TwilioEdge, session: aiohttp.ClientSession
) -> tuple[SimulatedCall, StreamInstruction]:
    """A call Twilio's REST stand-in knows (so it can be hung up or updated), streaming."""
    call = twilio_edge.call(session)
    twilio_edge.fake.add_call(call.call_sid, to=LOCAL_NUMBER, from_=CALLER)
    stream = parse_twiml(await call.post_webhook()).stream
    assert stream is not None
    await call.open_stream(stream)
    return call, stream


async def test_dtmf_reaches_the_agent_whose_end_call_hangs_up_through_rest(
    twilio_edge: TwilioEdge, session: aiohttp.ClientSession
) -> None:
    call, stream = await connect_known_call(twilio_edge, session)
    # the demo core answers DTMF 9 with end_call (after its greeting has played)
    await call.stream_audio([], silence_after_s=0.3, dtmf=[(0.1, "9")])
    await call.stream_until_quiet(until=lambda r: False, max_s=5)
    assert await call.wait_closed(5), "the edge hangs up"
    await call.finish()
    # once Twilio has played the greeting's end, its playout lead included
    assert call.result.unheard_frames == 0
    assert call.result.frames_played * 0.02 == pytest.approx(1.5, abs=0.05)
    fake_call = twilio_edge.fake.calls[call.call_sid]
    assert fake_call.status == "completed"
    assert [u["Status"] for u in fake_call.updates] == [["completed"]]
    record = await twilio_edge.services.call_service.get(stream.parameters["call_id"])
    assert record is not None and record.call_status is CallStatus.AGENT_ENDED
    [payload] = await twilio_edge.crm.wait(1)
    assert payload["call_status"] == "agent-ended"


async def test_agent_transfer_replaces_the_twiml_with_dial(
    twilio_edge: TwilioEdge, session: aiohttp.ClientSession
) -> None:
    call, stream = await connect_known_call(twilio_edge, session)
    # DTMF 0: the demo core asks for a transfer to its default destination
    await call.stream_audio([], silence_after_s=0.3, dtmf=[(0.1, "0")])
    await call.stream_until_quiet(until=lambda r: False, max_s=5)
    assert await call.wait_closed(5)
    await call.finish()
    [update] = twilio_edge.fake.calls[call.call_sid].updates
    assert update["Twiml"] == [
        '<?xml version="1.0" encoding="UTF-8"?>'
        "<Response><Dial><Number>+15555550123</Number></Dial></Response>"
    ]
    record = await twilio_edge.services.call_service.get(stream.parameters["call_id"])
    assert record is not None
    assert record.call_status is CallStatus.AGENT_ENDED
    assert record.transferred_to == "+15555550123"


async def test_a_call_handed_over_by_another_region_runs_there(
    twilio_edge: TwilioEdge, make_twilio_edge: Any, session: aiohttp.ClientSession
) -> None:
    eu: TwilioEdge = await make_twilio_edge(
        server={"host": "127.0.0.1", "region": "eu", "public_url": "http://127.0.0.1:1"}
    )
    call = twilio_edge.call(session, to=EU_NUMBER)
    stream = parse_twiml(await call.post_webhook()).stream
    assert stream is not None and "call_id" not in stream.parameters
    # Twilio would connect to wss://eu.edge.example.com; here the EU edge is local
    local = type(stream)(
        url=f"ws://127.0.0.1:{eu.port}/twilio/stream", parameters=stream.parameters
    )
    await call.open_stream(local)
    await call.stream_audio([], silence_after_s=0.5)
    assert call.result.frames_received > 0  # the EU edge's agent greets
    [doc] = await eu.services.coordinator.list_active_calls()
    record = doc.data
    assert (record["to"], record["from_"], record["provider_call_id"]) == (
        EU_NUMBER,
        CALLER,
        call.call_sid,
    )
    await call.stop()
    # the hand-off token is single-use as well
    replay = twilio_edge.call(session, to=EU_NUMBER, call_sid=call.call_sid)
    await replay.open_stream(local)
    assert await replay.wait_closed(5)
    assert (await replay.finish()).close_code == 1008
