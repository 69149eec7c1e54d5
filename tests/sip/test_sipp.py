"""End to end with a real sipp against the edge on real sockets: register, INVITE, RTP, BYE.

The edge runs in-process (``make_edge``) with the built-in agent core. In the
main test sipp does the signalling while the test owns the caller's RTP
socket (the SDP names it: ``-set rtp_port``), so it can both speak PCMA into
the call and count what the edge sends back. A second test lets sipp play
its own PCMA pcap. With CI=true a missing sipp fails instead of skipping.
"""

from __future__ import annotations

import asyncio
import audioop
import itertools
import json
import os
import shutil
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from telephony_edge.audio.g711 import Law
from telephony_edge.audio.transcode import G711Encoder
from telephony_edge.config import load_settings
from telephony_edge.sip.provider import SIP_ENDPOINT
from telephony_edge.sip.rtp import build_rtp, parse_rtp
from tests.conftest import Edge, free_port, read_wav, wait_for

SCENARIOS = Path(__file__).resolve().parents[2] / "sip"
API_KEY = "private-api-key-for-sip-tests-01"
PCAP = Path("/usr/share/sip-tester/g711a.pcap")


def sipp_binary() -> str:
    path = shutil.which("sipp")
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail("sipp is missing (Debian package sip-tester); CI must install it")
        pytest.skip("sipp is not installed (apt-get install sip-tester)")
    return path


@dataclass
class Receiver:
    """The agent's end-of-call webhook target."""

    url: str = ""
    received: list[dict[str, Any]] = field(default_factory=list)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    box = Receiver()

    async def ended(request: web.Request) -> web.Response:
        box.received.append(json.loads(await request.read()))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/ended", ended)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    box.url = str(server.make_url("/ended"))
    yield box
    await server.close()


@pytest.fixture
async def sip_edge(make_edge: Callable[..., Any], receiver: Receiver) -> Edge:
    sipp_binary()
    rtp_low = free_port() // 2 * 2
    settings = load_settings(
        None,
        api={"private_key": API_KEY},
        webhooks={
            "signing_secret": "whsec_sip_tests_0001",
            "allow_private_targets": True,
            "backoff_base_s": 0.05,
        },
        sip={
            "enabled": True,
            "port": 0,
            "rtp_port_min": rtp_low,
            "rtp_port_max": rtp_low + 40,
        },
        agents={
            "echo": {
                "prompt": "You echo.",
                "first_message": "Hi",
                "session_data_webhook": receiver.url,
            }
        },
        calls={"inactivity_timeout_s": 30},
    )
    edge: Edge = await make_edge(settings)
    return edge


async def register(edge: Edge, **body: Any) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            edge.url("/register_sip_call"),
            json={"agent_id": "echo", **body},
            headers={"Authorization": f"Bearer {API_KEY}"},
        ) as resp,
    ):
        assert resp.status == 200, await resp.text()
        data: dict[str, Any] = await resp.json()
        return data


async def sipp(
    edge: Edge, scenario: str, user: str, cwd: Path, *extra: str
) -> asyncio.subprocess.Process:
    """Start sipp against the edge's SIP port (the command line a user would type)."""
    port = edge.app[SIP_ENDPOINT].port
    args = [
        f"127.0.0.1:{port}",
        "-sf", str(SCENARIOS / scenario),
        "-s", user,
        "-i", "127.0.0.1", "-mi", "127.0.0.1",
        "-p", str(free_port()), "-mp", str(free_port() // 2 * 2),
        "-m", "1", "-nostdin", "-timeout", "20", "-timeout_error",
        "-trace_err", "-error_file", str(cwd / "sipp_errors.log"),
        *extra,
    ]  # fmt: skip
    return await asyncio.create_subprocess_exec(
        sipp_binary(),
        *args,
        cwd=cwd,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )


async def finished(process: asyncio.subprocess.Process, cwd: Path) -> None:
    _, stderr = await asyncio.wait_for(process.communicate(), 30)
    errors = cwd / "sipp_errors.log"
    detail = errors.read_text(errors="replace")[-2000:] if errors.exists() else ""
    assert process.returncode == 0, f"sipp exit {process.returncode}: {stderr!r}\n{detail}"


class CallerMedia(asyncio.DatagramProtocol):
    """The caller's RTP socket: what the edge sends is kept with its source."""

    def __init__(self) -> None:
        self.received: list[tuple[bytes, tuple[str, int]]] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.received.append((data, addr))


async def speak_pcma(media: CallerMedia, dest: tuple[str, int], pcm: bytes) -> None:
    """Send ``pcm`` (canonical) as 20 ms PCMA RTP at real time."""
    encoder = G711Encoder(Law.ALAW)
    loop = asyncio.get_running_loop()
    start = loop.time()
    assert media.transport is not None
    for i in range(0, len(pcm) - 639, 640):
        n = i // 640
        payload = encoder.encode(pcm[i : i + 640])
        media.transport.sendto(build_rtp(8, 1000 + n, 160 * n, 0xC0FFEE, n == 0, payload), dest)
        await asyncio.sleep(max(0.0, start + (n + 1) * 0.02 - loop.time()))


def loud(payload: bytes) -> bool:
    return audioop.rms(audioop.alaw2lin(payload, 2), 2) > 300


async def test_register_invite_rtp_both_ways_bye(
    sip_edge: Edge, receiver: Receiver, tmp_path: Path
) -> None:
    reg = await register(sip_edge, metadata={"crm_id": "42"})
    call_id = reg["call_id"]
    port = sip_edge.app[SIP_ENDPOINT].port
    assert reg["sip_uri"] == f"sip:{call_id}@127.0.0.1:{port}"

    loop = asyncio.get_running_loop()
    _, media = await loop.create_datagram_endpoint(CallerMedia, local_addr=("127.0.0.1", 0))
    assert media.transport is not None
    rtp_port = media.transport.get_extra_info("sockname")[1]
    process = await sipp(
        sip_edge, "uac_external_media.xml", call_id, tmp_path,
        "-set", "rtp_port", str(rtp_port), "-d", "6000",
    )  # fmt: skip
    endpoint = sip_edge.app[SIP_ENDPOINT]
    await wait_for(lambda: endpoint.legs, within=5)
    leg = next(iter(endpoint.legs.values()))
    speech = read_wav("speech_table.wav")[: 16000 * 2 * 2]  # two seconds of speech
    await speak_pcma(media, ("127.0.0.1", leg.port), speech + bytes(640 * 60))
    await finished(process, tmp_path)
    media.transport.close()

    packets = [(parse_rtp(data), src) for data, src in media.received]
    assert {src for _, src in packets} == {("127.0.0.1", leg.port)}  # symmetric: from its port
    rtp = [p for p, _ in packets if p is not None and p.payload_type == 8]
    assert len(rtp) > 50, f"only {len(rtp)} RTP packets from the edge"
    assert sum(loud(p.payload) for p in rtp) > 25  # the chime and the echo, not silence
    assert len({p.ssrc for p in rtp}) == 1
    seqs = [p.sequence for p in rtp]
    assert all((b - a) & 0xFFFF == 1 for a, b in itertools.pairwise(seqs))
    assert rtp[0].marker

    await wait_for(lambda: receiver.received, within=10)
    [payload] = receiver.received
    assert payload["call_id"] == call_id
    assert payload["call_status"] == "user-ended"
    chat = json.dumps(payload.get("chat"))
    assert "caller spoke" in chat, chat[:500]  # the agent core heard the caller
    # the registration was claimed: the same sip_uri again is 404
    again = await sipp(sip_edge, "uac_expect_404.xml", call_id, tmp_path)
    await finished(again, tmp_path)


@pytest.mark.skipif(not PCAP.exists() and os.environ.get("CI") != "true", reason="no sipp pcap")
async def test_sipp_plays_pcma_pcap_into_the_call(
    sip_edge: Edge, receiver: Receiver, tmp_path: Path
) -> None:
    reg = await register(sip_edge)
    process = await sipp(sip_edge, "uac_pcma_pcap.xml", reg["call_id"], tmp_path, "-d", "2500")
    endpoint = sip_edge.app[SIP_ENDPOINT]
    await wait_for(lambda: endpoint.legs, within=5)
    leg = next(iter(endpoint.legs.values()))
    await finished(process, tmp_path)
    assert leg.inbound is not None and leg.inbound.stats.received > 50  # 30 ms packets
    assert leg.frames_in > 75  # re-framed to 20 ms
    assert leg.sender is not None and leg.sender.sent > 0
    await wait_for(lambda: receiver.received, within=10)
    assert receiver.received[0]["call_status"] == "user-ended"


async def test_unknown_call_id_gets_404(sip_edge: Edge, tmp_path: Path) -> None:
    process = await sipp(sip_edge, "uac_expect_404.xml", "call_unknown", tmp_path)
    await finished(process, tmp_path)
