"""Answering-machine detection on a SIP call: sipp signals, the test's RTP socket speaks.

SIP calls reach the edge inbound only, so the operator's option turns
detection on for them (``voicemail.inbound``, in the registration's
``agent_config``); the edge's own detector listens to the callee's audio.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from telephony_edge.sip.provider import SIP_ENDPOINT
from telephony_edge.sip.rtp import parse_rtp
from tests.conftest import Edge, Receiver, read_wav, wait_for
from tests.sip.conftest import finished, register, sipp
from tests.sip.test_sipp import CallerMedia, loud, speak_pcma


class TimedMedia(CallerMedia):
    """The caller's RTP socket, noting when each packet from the edge arrived."""

    def __init__(self) -> None:
        super().__init__()
        self.arrived: list[float] = []

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        super().datagram_received(data, addr)
        self.arrived.append(asyncio.get_running_loop().time())


async def call(
    edge: Edge, tmp_path: Path, voicemail: dict[str, Any], scenario: str, *extra: str
) -> tuple[asyncio.subprocess.Process, TimedMedia, tuple[str, int]]:
    reg = await register(
        edge,
        agent_config={"voicemail": {"detect": True, "inbound": True, **voicemail}},
        metadata={"name": "Jordan"},
    )
    loop = asyncio.get_running_loop()
    _, media = await loop.create_datagram_endpoint(TimedMedia, local_addr=("127.0.0.1", 0))
    assert media.transport is not None
    rtp_port = media.transport.get_extra_info("sockname")[1]
    process = await sipp(
        edge, scenario, reg["call_id"], tmp_path, "-set", "rtp_port", str(rtp_port), *extra
    )
    endpoint = edge.app[SIP_ENDPOINT]
    await wait_for(lambda: endpoint.legs, within=5)
    leg = next(iter(endpoint.legs.values()))
    return process, media, ("127.0.0.1", leg.port)


async def test_a_voicemail_greeting_gets_the_message_after_the_beep(
    sip_edge: Edge, receiver: Receiver, tmp_path: Path
) -> None:
    voicemail = {"action": "leave_message", "message": "Hello {name}, please call us back."}
    process, media, dest = await call(
        sip_edge, tmp_path, voicemail, "uac_external_media_edge_bye.xml", "-timeout", "60"
    )
    greeting = read_wav("amd/voicemail_beep.wav")
    await speak_pcma(media, dest, greeting)
    spoke_until = asyncio.get_running_loop().time()
    await finished(process, tmp_path)  # the edge's BYE came once the message was left
    assert media.transport is not None
    media.transport.close()

    # what the machine recorded after its beep: the demo core's message, at least 1.5 s
    after_beep = [
        data
        for (data, _), at in zip(media.received, media.arrived, strict=True)
        if at > spoke_until - 1.4
    ]
    rtp = [p for p in map(parse_rtp, after_beep) if p is not None and p.payload_type == 8]
    assert sum(loud(p.payload) for p in rtp) > 75

    await wait_for(lambda: receiver.received, within=10)
    [payload] = receiver.received
    assert payload["call_status"] == "voicemail-message"
    amd = payload["voip"]["amd"]
    assert (amd["result"], amd["beep"], amd["source"]) == ("machine", True, "edge")
    assert 1000 < amd["decided_after_ms"] < 3500  # long greeting / too many words
    message = payload["agent_config"]["voicemail"]["message"]
    assert message == "Hello Jordan, please call us back."
    chat = json.loads(payload["chat"])
    assert chat[-1]["content"] == message, chat


async def test_a_person_is_answered_and_detection_says_human(
    sip_edge: Edge, receiver: Receiver, tmp_path: Path
) -> None:
    process, media, dest = await call(
        sip_edge, tmp_path, {"action": "hangup"}, "uac_external_media.xml", "-d", "6000"
    )
    await speak_pcma(media, dest, read_wav("amd/human_hello.wav") + bytes(640 * 50))
    await finished(process, tmp_path)
    assert media.transport is not None
    media.transport.close()

    await wait_for(lambda: receiver.received, within=10)
    [payload] = receiver.received
    assert payload["call_status"] == "user-ended"  # a person: no hang-up on them
    amd = payload["voip"]["amd"]
    assert (amd["result"], amd["beep"], amd["source"]) == ("human", False, "edge")
    assert amd["decided_after_ms"] < 2500
    assert "caller spoke" in payload["chat"]  # the agent heard them while detection ran
