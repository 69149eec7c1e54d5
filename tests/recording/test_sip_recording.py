"""A recorded SIP call: sipp does the signalling, the test is the caller's RTP (PCMA)."""

from __future__ import annotations

import asyncio
import audioop
import hashlib
from pathlib import Path

import numpy as np
import pytest

from telephony_edge.sip.provider import SIP_ENDPOINT
from telephony_edge.sip.rtp import parse_rtp
from tests.conftest import Edge, Receiver, read_wav, wait_for
from tests.recording.audio import RATE, locate, locate_in_pieces, read_channels
from tests.recording.test_call_recording import download
from tests.sip.conftest import finished, register, sipp
from tests.sip.test_sipp import CallerMedia, loud, speak_pcma


class TimedMedia(CallerMedia):
    """The caller's RTP socket, with when each packet arrived."""

    def __init__(self) -> None:
        super().__init__()
        self.times: list[float] = []

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        super().datagram_received(data, addr)
        self.times.append(asyncio.get_running_loop().time())


def alaw_as_pcm16k(payloads: list[bytes]) -> np.ndarray:
    pcm, _ = audioop.ratecv(audioop.alaw2lin(b"".join(payloads), 2), 2, 1, 8000, 16000, None)
    return np.frombuffer(pcm, dtype="<i2").astype(np.float64)


async def test_a_recorded_sip_call(
    recording_dir: Path, sip_edge: Edge, receiver: Receiver, tmp_path: Path
) -> None:
    # recorded because this call asks for it (the agent does not)
    reg = await register(sip_edge, agent_config={"recording": {"enabled": True}})
    loop = asyncio.get_running_loop()
    _, media = await loop.create_datagram_endpoint(TimedMedia, local_addr=("127.0.0.1", 0))
    assert media.transport is not None
    rtp_port = media.transport.get_extra_info("sockname")[1]
    process = await sipp(
        sip_edge, "uac_external_media.xml", reg["call_id"], tmp_path,
        "-set", "rtp_port", str(rtp_port), "-d", "6000",
    )  # fmt: skip
    endpoint = sip_edge.app[SIP_ENDPOINT]
    await wait_for(lambda: endpoint.legs, within=5)
    leg = next(iter(endpoint.legs.values()))
    speech = read_wav("speech_table.wav")[: 16000 * 2 * 2]
    spoke_at = loop.time()
    await speak_pcma(media, ("127.0.0.1", leg.port), speech + bytes(640 * 60))
    await finished(process, tmp_path)
    media.transport.close()
    await wait_for(lambda: receiver.received, within=10)

    meta = receiver.received[0]["recording"]
    status, body = await download(meta["url"])
    assert status == 200 and hashlib.sha256(body).hexdigest() == meta["sha256"]
    channels, (left, right) = read_channels(body)
    assert channels == 2 and len(left) / RATE == pytest.approx(meta["duration_s"], abs=0.001)
    assert meta["duration_s"] == pytest.approx(6.0, abs=1.0)  # sipp's -d after the answer
    # by pieces: the jitter buffer may drop a quiet frame between words while its delay
    # settles, which shifts what follows by 20 ms
    caller_at, agreeing = locate_in_pieces(
        left, np.frombuffer(speech, dtype="<i2").astype(np.float64)
    )
    assert agreeing >= 0.75
    # the right channel: what the caller's RTP socket received, at the time it arrived
    packets = [
        (at, rtp.payload)
        for at, (data, _) in zip(media.times, media.received, strict=True)
        if (rtp := parse_rtp(data)) is not None and rtp.payload_type == 8
    ]
    starts = [  # the greeting's, and the echo's after the caller stopped
        next(i for i, (at, p) in enumerate(packets) if loud(p) and at > after)
        for after in (0.0, spoke_at + len(speech) / 32000 + 0.3)
    ]
    for i in starts:
        chunk = alaw_as_pcm16k([p for _, p in packets[i : i + 25]])
        agent_at, score = locate(right, chunk)
        assert score > 0.9
        assert agent_at - caller_at == pytest.approx(packets[i][0] - spoke_at, abs=0.1)
