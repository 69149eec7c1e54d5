"""The audio WebSocket: admission (connected message, token, format), hostile input."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
from prometheus_client import REGISTRY

from telephony_edge.calls.record import CallState, CallStatus
from telephony_edge.vonage.simulator import SILENCE, SimulatedVonageCall, WebsocketInstruction
from tests.conftest import read_wav, wait_for
from tests.vonage.harness import VonageEdge


async def _answer(call: SimulatedVonageCall) -> WebsocketInstruction:
    await call.post_answer()
    assert call.result.answer is not None and call.result.answer.websocket is not None
    return call.result.answer.websocket


async def _close_code(call: SimulatedVonageCall) -> int | None:
    """Keep sending audio until the edge closes; the close code (no audio may come back)."""
    for _ in range(10):
        if not await call.send_audio(SILENCE):
            break
        await asyncio.sleep(0.02)
    assert await call.wait_closed(5), "the edge must close a refused socket"
    result = await call.finish()
    assert result.frames_received == 0
    return result.close_code


def _bad_input(source: str = "vonage-media") -> float:
    return REGISTRY.get_sample_value("telephony_edge_bad_input_total", {"source": source}) or 0.0


async def test_bad_missing_or_foreign_tokens_are_closed_with_1008(
    vonage_edge: VonageEdge, session: aiohttp.ClientSession
) -> None:
    first = vonage_edge.call(session)
    ws = await _answer(first)
    call_id = ws.headers["call_id"]
    other = await _answer(vonage_edge.call(session))
    token = ws.headers["edge_token"]
    cases = [
        {"call_id": call_id, "vonage_uuid": first.uuid},  # no token
        {**ws.headers, "edge_token": "garbage"},
        {**ws.headers, "edge_token": token[:-2] + "AA"},  # forged
        {**ws.headers, "edge_token": other.headers["edge_token"]},  # another call's
        {**ws.headers, "edge_token": vonage_edge.vonage.tokens.issue(call_id, time.time() - 120)},
        {**ws.headers, "vonage_uuid": "someone-else"},  # a genuine token, another Vonage call
    ]
    before = _bad_input("vonage-ws")
    for headers in cases:
        call = vonage_edge.call(session, uuid=first.uuid)
        await call.open_socket(ws, headers=headers)
        assert await _close_code(call) == 1008, headers
    assert _bad_input("vonage-ws") >= before + len(cases)
    record = await vonage_edge.services.call_service.get(call_id)
    assert record is not None and record.state is CallState.CREATED  # untouched
    # none of the attempts used up the token: the genuine socket still attaches, once
    await first.open_socket(ws)
    await first.silence_until(lambda _: first.result.frames_received > 0, 3)
    assert first.result.frames_received > 0
    replay = vonage_edge.call(session, uuid=first.uuid)
    await replay.open_socket(ws)
    assert await _close_code(replay) == 1008
    await first.hang_up()


async def test_no_connected_message_or_wrong_content_type_is_refused(
    vonage_edge: VonageEdge, session: aiohttp.ClientSession
) -> None:
    ws = await _answer(vonage_edge.call(session))
    openings: list[tuple[dict[str, str | bytes], int]] = [
        ({"first_message": SILENCE}, 1008),  # audio before websocket:connected
        ({"first_message": "{not json"}, 1008),
        ({"first_message": '{"event":"websocket:dtmf","digit":"1"}'}, 1008),
        ({"content_type": "audio/l16;rate=8000"}, 1003),
        ({"content_type": "audio/l16;rate=24000"}, 1003),
    ]
    for kwargs, code in openings:
        call = vonage_edge.call(session)
        await call.open_socket(ws, **kwargs)  # type: ignore[arg-type]
        assert await _close_code(call) == code, kwargs
    # silence instead of websocket:connected: closed after the timeout
    vonage_edge.vonage.connected_timeout_s = 0.3
    call = vonage_edge.call(session)
    call.ws = await session.ws_connect(ws.uri)
    msg = await call.ws.receive(timeout=3)
    assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == 1008


async def test_odd_oversize_and_malformed_input_is_counted_never_fatal(
    vonage_edge: VonageEdge, session: aiohttp.ClientSession
) -> None:
    call = vonage_edge.call(session)
    ws = await _answer(call)
    await call.open_socket(ws)
    before = _bad_input()
    speech = read_wav("speech_order.wav")[: 640 * 50]
    # one second of speech cut at odd places: re-framed, not lost
    for size in (100, 540, 1000, 280, 1280):
        await call.send_raw(speech[:size])
        speech = speech[size:]
    hostile: list[str | bytes] = [
        b"\x01" * 641,  # an odd number of bytes: not 16-bit samples
        b"\x00" * 64000,  # oversize: refused
        b"",
        "{not json",
        "[]",
        '{"event":"websocket:dtmf","digit":"x"}',
        '{"event":"websocket:dtmf"}',
        '{"event":"something:else"}',
        '{"event":"websocket:connected","content-type":"audio/l16;rate=16000"}',
        '{"no_event":1}',
    ]
    for item in hostile:
        await call.send_raw(item)
    await call.send_raw('{"event":"websocket:cleared"}')  # Vonage's own events: fine
    await call.stream_audio([], silence_after_s=0.6)
    assert not call.ws.closed  # type: ignore[union-attr]
    assert call.result.frames_received > 0  # the agent still talks
    await wait_for(lambda: _bad_input() >= before + len(hostile), 3)
    await call.hang_up()
    record = await vonage_edge.services.call_service.get(ws.headers["call_id"])
    assert record is not None and record.call_status is CallStatus.USER_ENDED


async def test_dtmf_reaches_the_agent_whose_end_call_closes_the_socket(
    vonage_edge: VonageEdge, session: aiohttp.ClientSession
) -> None:
    call = vonage_edge.call(session)
    ws = await _answer(call)
    await call.open_socket(ws)
    # the demo core answers DTMF 9 with end_call (after its greeting has played)
    await call.stream_audio([], silence_after_s=0.3, dtmf=[(0.1, "9")])
    await call.silence_until(lambda _: False, 5)
    assert await call.wait_closed(5), "the edge hangs up"
    await call.finish()
    # once Vonage has played the greeting's end, its playout lead included
    assert call.result.unheard_frames == 0
    assert call.result.frames_played * 0.02 == pytest.approx(1.5, abs=0.05)
    record = await vonage_edge.services.call_service.get(ws.headers["call_id"])
    assert record is not None and record.call_status is CallStatus.AGENT_ENDED
    [payload] = await vonage_edge.crm.wait(1)
    assert payload["call_status"] == "agent-ended"
