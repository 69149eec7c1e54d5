"""sipp as a trunk that takes (or refuses) a blind transfer by REFER from the running edge.

The agent asks through the demo core's DTMF hook (``0`` → ``transfer_call`` to
``+15555550123``) or the public API (``POST /calls/{id}/transfer``).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import aiohttp
import pytest

from telephony_edge.calls.record import CallState
from tests.conftest import Edge, Receiver, wait_for
from tests.sip.conftest import API_KEY, finished, register, sipp


async def test_agent_transfer_is_refer_202_notify_200_then_bye_and_ends_as_transferred(
    sip_edge: Edge, receiver: Receiver, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="telephony_edge.sip.transport")
    reg = await register(sip_edge)
    process = await sipp(sip_edge, "uac_refer.xml", reg["call_id"], tmp_path)
    # sipp checked Refer-To <tel:+15555550123>, answered 202, sent NOTIFY 100 and 200,
    # and got the edge's BYE
    await finished(process, tmp_path)
    await wait_for(lambda: receiver.received, within=10)
    [payload] = receiver.received
    assert payload["call_status"] == "agent-ended"
    record = await sip_edge.services.call_service.get(reg["call_id"])
    assert record is not None and record.transferred_to == "+15555550123"
    assert any(r.getMessage() == "SIP transfer done" for r in caplog.records)


async def call_is_active(edge: Edge, call_id: str) -> bool:
    record = await edge.services.call_service.get(call_id)
    return record is not None and record.state is CallState.ACTIVE


async def test_refused_refer_answers_the_api_502_and_the_edge_hangs_up(
    sip_edge: Edge, receiver: Receiver, tmp_path: Path
) -> None:
    reg = await register(sip_edge)
    call_id = reg["call_id"]
    process = await sipp(sip_edge, "uac_refer_refused.xml", call_id, tmp_path)
    for _ in range(500):
        if await call_is_active(sip_edge, call_id):
            break
        await asyncio.sleep(0.02)
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            sip_edge.url(f"/calls/{call_id}/transfer"),
            json={"destination": "sip:desk@pbx.example.com"},
            headers={"Authorization": f"Bearer {API_KEY}"},
        ) as resp,
    ):
        assert resp.status == 502, await resp.text()
        assert "REFER refused: 403 Forbidden" in (await resp.json())["error"]
    await finished(process, tmp_path)  # sipp got the BYE after its 403
    await wait_for(lambda: receiver.received, within=10)
    [payload] = receiver.received
    assert payload["call_status"] == "error"
    assert "refused the REFER" in payload["error_message"]
    record = await sip_edge.services.call_service.get(call_id)
    assert record is not None and record.transferred_to is None
