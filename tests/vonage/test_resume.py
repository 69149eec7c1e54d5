"""``/vonage/resume`` and the socket that comes back, on one edge (``tests/vonage/harness.py``).

The end-to-end moves (two workers, SIGKILL, SIGTERM) are ``tests/vonage/test_failover.py``;
here: what a notify gets when the call is not to be resumed, the edge's own hang-up
without the Voice API (the socket closes after the end is written, so the NCCO's
notify finds the call over), and a resumed socket that cannot prove itself.
"""

from __future__ import annotations

import aiohttp
import orjson
from yarl import URL

from telephony_edge.calls.record import CallStatus
from telephony_edge.vonage import ncco
from telephony_edge.vonage.signature import query_payload, sign
from telephony_edge.vonage.simulator import WebsocketInstruction
from tests.conftest import wait_for
from tests.vonage.harness import API_KEY, SECRET, VonageEdge


def _signed(url: URL) -> dict[str, str]:
    return {"Authorization": f"Bearer {sign(SECRET, query_payload(url.query.items()))}"}


async def test_a_notify_is_signed_well_formed_and_for_a_known_call(
    vonage_edge: VonageEdge, session: aiohttp.ClientSession
) -> None:
    url = URL(ncco.resume_url(vonage_edge.base, "call_nope")).extend_query({"uuid": "u-1"})
    async with session.get(url) as resp:
        assert resp.status == 401  # unsigned
    bad = URL(f"{vonage_edge.base}{ncco.RESUME_PATH}?call_id=call_nope&hop=x&g=0")
    async with session.get(bad, headers=_signed(bad)) as resp:
        assert resp.status == 400
    async with session.get(url, headers=_signed(url)) as resp:
        assert resp.status == 204  # a call the edge does not know: no NCCO, the call ends


async def test_an_edge_hang_up_without_the_voice_api_is_not_resumed(
    vonage_edge: VonageEdge, session: aiohttp.ClientSession
) -> None:
    call = vonage_edge.call(session)
    await call.post_answer()
    answer = call.result.answer
    assert answer is not None and answer.websocket is not None
    call_id = answer.websocket.headers["call_id"]
    await call.open_socket(answer.websocket)
    await call.wait_for_greeting()
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with session.post(f"{vonage_edge.base}/calls/{call_id}/hangup", headers=headers) as r:
        assert r.status == 200, await r.text()
    # the socket closed: Vonage went on to the notify, which found the call over
    assert await call.wait_over(5)
    assert [status for _, status in call.result.notified] == [204]
    assert call.result.ncco_ended and len(call.result.sockets) == 1
    service = vonage_edge.services.call_service
    await wait_for(lambda: service.manager.get(call_id) is None, 5)
    record = await service.get(call_id)
    assert record is not None and record.call_status is CallStatus.API_ENDED
    assert not record.migrations
    [payload] = await vonage_edge.crm.wait(1)
    assert payload["call_status"] == "api-ended"


async def test_a_resumed_socket_needs_a_token_for_its_call_and_generation(
    vonage_edge: VonageEdge, session: aiohttp.ClientSession
) -> None:
    call = vonage_edge.call(session)
    await call.post_answer()
    answer = call.result.answer
    assert answer is not None and answer.websocket is not None
    live_headers = answer.websocket.headers
    call_id = live_headers["call_id"]
    forged = {
        "edge_token": vonage_edge.vonage.tokens.issue(f"{call_id}|resume|7"),
        "call_id": call_id,
        "vonage_uuid": call.uuid,
        "resume": "0",  # not the generation the token names
    }
    for headers in (
        forged,
        {**forged, "edge_token": live_headers["edge_token"]},  # the first socket's token
        {**forged, "resume": "zero"},
    ):
        other = vonage_edge.call(session)
        uri = answer.websocket.uri
        await other.open_socket(WebsocketInstruction(uri, "audio/l16;rate=16000", headers))
        assert await other.wait_closed(5)
        assert other.result.close_code == 1008
        assert other.result.frames_received == 0
    record = await vonage_edge.services.call_service.get(call_id)
    assert record is not None and record.owner is None  # nobody took the call over
    assert orjson.dumps(record.migrations or []) == b"[]"
