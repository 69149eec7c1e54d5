"""sipp against the running edge: DTMF of every kind, BYE from the edge, CANCEL.

The edge runs in-process on real sockets (``make_edge``) with the demo agent
core, whose DTMF hooks make the observable: every key it receives is logged
once (``demo core: call …: dtmf '5'``), and ``9`` makes it ``end_call``, so the
edge sends BYE and the call ends ``agent-ended``.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from telephony_edge.sip.provider import SIP_ENDPOINT
from tests.conftest import Edge, Receiver, wait_for
from tests.sip.conftest import finished, register, sipp

DTMF_PCAP = Path("/usr/share/sip-tester/dtmf_2833_5.pcap")


def keys_received(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The keys the demo agent core got, in order (its log line per DTMF message)."""
    return [
        r.getMessage().rsplit("dtmf ", 1)[1].strip("'")
        for r in caplog.records
        if r.name == "telephony_edge.agent.demo" and ": dtmf " in r.getMessage()
    ]


async def test_dtmf_rfc4733_and_info_reach_the_agent_and_9_makes_the_edge_hang_up(
    sip_edge: Edge, receiver: Receiver, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="telephony_edge.agent.demo")
    reg = await register(sip_edge)
    process = await sipp(sip_edge, "uac_dtmf_bye.xml", reg["call_id"], tmp_path)
    await finished(process, tmp_path)  # includes: the edge's BYE came, sipp answered 200
    await wait_for(lambda: receiver.received, within=10)
    [payload] = receiver.received
    assert payload["call_status"] == "agent-ended"
    # RFC 4733 5 (end packet sent three times), INFO dtmf-relay 2, INFO dtmf 3, RFC 4733 9
    assert keys_received(caplog) == ["5", "2", "3", "9"]
    ua = sip_edge.app[SIP_ENDPOINT].ua
    assert ua is not None and not ua.calls()


def ring(edge: Edge, seconds: float) -> None:
    """Make the running edge ring (180) ``seconds`` before answering (``sip.ring_s``)."""
    endpoint = edge.app[SIP_ENDPOINT]
    endpoint.settings = endpoint.settings.model_copy(update={"ring_s": seconds})


async def test_cancel_after_180_gets_200_and_487_and_ends_the_call_record_once(
    sip_edge: Edge, receiver: Receiver, tmp_path: Path
) -> None:
    ring(sip_edge, 1.0)
    reg = await register(sip_edge)
    call_id = reg["call_id"]
    process = await sipp(sip_edge, "uac_cancel.xml", call_id, tmp_path)
    await finished(process, tmp_path)  # 180, then 200 for the CANCEL and 487 for the INVITE
    endpoint = sip_edge.app[SIP_ENDPOINT]
    await wait_for(lambda: receiver.received, within=5)
    [payload] = receiver.received
    assert payload["call_id"] == call_id
    assert payload["call_status"] == "user-ended"
    record = await sip_edge.services.call_service.get(call_id)
    assert record is not None and record.state.value == "ended"
    await asyncio.sleep(1.2)  # past the ring: no late 200, no leg, no second end
    assert not endpoint.legs
    assert endpoint.ua is not None and not endpoint.ua.calls()
    assert len(receiver.received) == 1
    # the registration was spent by that INVITE: calling it again is 404
    again = await sipp(sip_edge, "uac_expect_404.xml", call_id, tmp_path)
    await finished(again, tmp_path)
