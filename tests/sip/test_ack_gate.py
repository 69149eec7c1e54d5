"""The agent's session starts at the ACK, not at the 200 OK (issue 18).

Over UDP anyone can send an INVITE with someone else's address in it; the edge's
200 then goes to a party that never asked and never ACKs. Until the ACK the call
holds an RTP port and nothing else: no agent session (paid agent time), and when
the UA gives up on the ACK (Timer H, 64·T1) the call's record ends ``error``.
"""

from __future__ import annotations

import asyncio
import dataclasses

from telephony_edge.calls.record import CallState
from telephony_edge.sip.provider import SIP_ENDPOINT
from telephony_edge.sip.transaction import Timers
from tests.conftest import Edge, Receiver, wait_for
from tests.sip.test_udp_edge import open_socket, sdp, start_call


async def test_the_agent_session_starts_at_the_ack_not_at_the_200(
    sip_edge: Edge, receiver: Receiver
) -> None:
    rtp = await open_socket()
    caller, _ = await start_call(sip_edge, sdp(rtp.port))
    call_id = caller.user
    calls = sip_edge.services.calls
    await asyncio.sleep(1.0)  # answered, not acknowledged: the 2xx is retransmitted
    assert calls.get(call_id) is None  # no bridge, so no agent session
    record = await sip_edge.services.call_service.get(call_id)
    assert record is not None and record.state is CallState.CREATED
    caller.send(caller.request("ACK", cseq=caller.cseq))
    await wait_for(lambda: (b := calls.get(call_id)) is not None and b.state is CallState.ACTIVE)
    caller.send(caller.request("BYE"))
    assert (await caller.response("BYE")).status == 200
    await wait_for(lambda: receiver.received, within=10)
    for sock in (rtp, caller.sip):
        sock.close()


async def test_a_200_never_acknowledged_ends_the_call_error_without_an_agent(
    sip_edge: Edge, receiver: Receiver
) -> None:
    ua = sip_edge.app[SIP_ENDPOINT].ua
    assert ua is not None
    ua.config = dataclasses.replace(ua.config, timers=Timers(t1=0.05, t2=0.4, t4=0.5))
    rtp = await open_socket()
    caller, _ = await start_call(sip_edge, sdp(rtp.port))  # and never an ACK
    await wait_for(lambda: receiver.received, within=10)  # Timer H: 3.2 s
    [payload] = receiver.received
    assert payload["call_id"] == caller.user
    assert payload["call_status"] == "error"
    assert "no ACK" in payload["error_message"]
    assert sip_edge.services.calls.get(caller.user) is None
    assert payload.get("chat") in (None, [], "[]")  # no agent ever spoke
    for sock in (rtp, caller.sip):
        sock.close()
