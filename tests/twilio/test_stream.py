"""The Media Streams WebSocket: admission (tokens, format), robustness to bad input."""

from __future__ import annotations

import asyncio
import time

import aiohttp
from prometheus_client import REGISTRY

from telephony_edge.calls.bridge import CallBridge
from telephony_edge.calls.service import CallService
from telephony_edge.twilio.simulator import (
    SimulatedCall,
    StreamInstruction,
    encode_payloads,
)
from tests.conftest import read_wav, wait_for
from tests.twilio.harness import TwilioEdge, pcm16_to_ulaw8k


async def _answer(call: SimulatedCall) -> StreamInstruction:
    await call.post_webhook()
    assert call.result.answer is not None and call.result.answer.stream is not None
    return call.result.answer.stream


async def _refused(call: SimulatedCall, stream: StreamInstruction, **params: str) -> int | None:
    """Open the stream with ``params``, keep sending audio; return the close code."""
    await call.open_stream(stream, parameters=params)
    for _ in range(10):
        if not await call.send_media(encode_payloads(b"\xff" * 160)[0]):
            break
        await asyncio.sleep(0.02)
    assert await call.wait_closed(5), "the edge must close a refused stream"
    result = await call.finish()
    assert result.frames_received == 0
    return result.close_code


def _bad_input() -> float:
    return (
        REGISTRY.get_sample_value("telephony_edge_bad_input_total", {"source": "twilio-media"})
        or 0.0
    )


async def test_bad_missing_or_foreign_tokens_are_closed_with_1008(
    twilio_edge: TwilioEdge, session: aiohttp.ClientSession
) -> None:
    first = twilio_edge.call(session)
    stream = await _answer(first)
    call_id = stream.parameters["call_id"]
    other = await _answer(twilio_edge.call(session))
    cases = [
        {"call_id": call_id},  # no token
        {"call_id": call_id, "token": "garbage"},
        {"call_id": call_id, "token": stream.parameters["token"][:-2] + "AA"},  # forged
        {"call_id": call_id, "token": other.parameters["token"]},  # another call's
        {"call_id": call_id, "token": twilio_edge.twilio.tokens.issue(call_id, time.time() - 120)},
    ]
    for params in cases:
        code = await _refused(twilio_edge.call(session, call_sid=first.call_sid), stream, **params)
        assert code == 1008, params
    record = await twilio_edge.services.call_service.get(call_id)
    assert record is not None and record.state.value == "created"  # untouched by the attempts


async def test_a_token_attaches_one_stream_only(
    twilio_edge: TwilioEdge, session: aiohttp.ClientSession
) -> None:
    call = twilio_edge.call(session)
    stream = await _answer(call)
    await call.open_stream(stream)
    replay = twilio_edge.call(session, call_sid=call.call_sid)
    assert await _refused(replay, stream, **stream.parameters) == 1008
    await call.stop()


async def test_wrong_media_format_and_no_start_are_refused(
    twilio_edge: TwilioEdge, session: aiohttp.ClientSession
) -> None:
    call = twilio_edge.call(session)
    stream = await _answer(call)
    ws = await session.ws_connect(stream.url)
    start = {
        "event": "start",
        "sequenceNumber": "1",
        "streamSid": call.stream_sid,
        "start": {
            "streamSid": call.stream_sid,
            "callSid": call.call_sid,
            "customParameters": stream.parameters,
            "mediaFormat": {"encoding": "audio/l16", "sampleRate": 16000, "channels": 1},
        },
    }
    await ws.send_json(start)
    msg = await ws.receive(timeout=5)
    assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == 1003

    twilio_edge.twilio.start_timeout_s = 0.2
    ws = await session.ws_connect(stream.url)
    await ws.send_json({"event": "connected", "protocol": "Call", "version": "1.0.0"})
    msg = await ws.receive(timeout=5)
    assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == 1008

    ws = await session.ws_connect(stream.url)
    await ws.send_str("not json")
    msg = await ws.receive(timeout=5)
    assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == 1008


async def test_malformed_messages_neither_end_the_call_nor_touch_others(
    twilio_edge: TwilioEdge, session: aiohttp.ClientSession
) -> None:
    payloads = encode_payloads(pcm16_to_ulaw8k(read_wav("speech_order.wav")))
    victim, bystander = twilio_edge.call(session), twilio_edge.call(session)
    for call in (victim, bystander):
        await call.open_stream(await _answer(call))
    before = _bad_input()
    garbage: list[str | bytes] = [
        "{not json",
        "[1, 2, 3]",
        '"just a string"',
        "{}",
        '{"event": "media"}',
        '{"event": "media", "media": "nope"}',
        '{"event": "media", "media": {"payload": "!!not base64!!"}}',
        '{"event": "media", "media": {"payload": ""}}',
        '{"event": "media", "media": {"payload": 42}}',
        '{"event": "dtmf", "dtmf": {"digit": "X"}}',
        '{"event": "dtmf"}',
        '{"event": "mark", "mark": null}',
        '{"event": "start", "start": {}}',
        '{"event": "wat"}',
        '{"event": "media", "sequenceNumber": "not a number"}',
        b"\x00\x01binary",
    ]
    for item in garbage:
        await victim.send_raw(item)
    victim._seq += 50  # a gap in the sequence numbers: Twilio lost messages
    results = await asyncio.gather(
        victim.stream_audio(payloads, silence_after_s=0.3),
        bystander.stream_audio(payloads, silence_after_s=0.3),
    )
    assert results == [None, None]
    for call in (victim, bystander):
        # the caller's speech reached the agent: its echo comes back
        await call.stream_until_quiet(until=lambda r: r.reply_frames >= 25, max_s=10)
        assert call.result.reply_frames >= 25, call.result.summary()
        assert not call.ws.closed  # type: ignore[union-attr]
        await call.stop()
    assert _bad_input() - before >= len(garbage) - 1
    gaps = REGISTRY.get_sample_value("telephony_edge_twilio_sequence_gaps_total") or 0
    assert gaps >= 50


async def test_a_stream_gone_silent_is_closed_and_the_call_goes_on_through_twilio(
    twilio_edge: TwilioEdge, session: aiohttp.ClientSession
) -> None:
    """A silent stream is a broken one: the edge closes it (1001), Twilio goes on to the
    resume <Redirect>, and the call goes on over a new stream (here, on the same worker)."""
    twilio_edge.twilio.idle_timeout_s = 0.3
    call = twilio_edge.call(session)
    stream = await _answer(call)
    call_id = stream.parameters["call_id"]
    await call.open_stream(stream)  # then nothing: no media, no stop
    await wait_for(lambda: call.result.streams == 2, 5)
    assert call.result.close_code == 1001  # the silent one's
    [resume] = call.result.resumes
    assert resume.hops == 1 and resume.streamed_at_s is not None
    talking = asyncio.create_task(call.stream_until_quiet(until=lambda r: False, max_s=30))
    service = twilio_edge.services.call_service
    await wait_for(lambda: _migrations(service, call_id), 5)
    talking.cancel()
    await call.stop()
    record = await service.get(call_id)
    assert record is not None
    [move] = record.migrations
    assert move["cause"] == "network" and move["from_worker"] == move["to_worker"]
    await wait_for(lambda: record.call_status is not None, 5)
    assert record.call_status.value == "user-ended"


def _migrations(service: CallService, call_id: str) -> bool:
    live = service.manager.get(call_id)
    return isinstance(live, CallBridge) and bool(live.record.migrations)
