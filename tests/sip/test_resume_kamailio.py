"""A SIP call outlives its worker (issue 24), with real peers only.

baresip calls through Kamailio running the shipped ``sip/examples/kamailio-resume.cfg``
to worker A, a ``telephony-edge serve`` on a real ``redis-server`` (the dispatcher lists
A alone: new calls go there). Worker B (another ``serve`` on the same Redis) takes the
call over, re-INVITEs baresip through Kamailio with its own media, baresip answers, audio
flows again from B, and baresip's BYE reaches B through Kamailio by the route in Redis
(nothing else could bring it there). The call ends once, with one webhook carrying the
conversation from both workers and the move.

* A SIGKILLed mid-speech: B sees A stop beating (sip/liveness.py) and takes the call
  over by itself.
* A SIGTERMed (a deploy): A moves the call itself (``drain``: the control message
  ``resume`` in B's inbox) and exits.

The gap is read from a capture of the RTP on loopback (tcpdump): A's last packet to
baresip and B's first, and the first and last with the agent's voice on each side.
"""

from __future__ import annotations

import asyncio
import audioop
import contextlib
import json
import signal
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from telephony_edge.coord.redis import RedisCoordinator
from tests.conftest import (
    Receiver,
    ServeProcess,
    free_port,
    start_serve_process,
    stop_serve_process,
    wait_for,
)
from tests.coord.redis_servers import RedisProcess
from tests.coord.redis_servers import redis_server as start_redis
from tests.sip import baresip
from tests.sip.capture import Capture, Datagram
from tests.sip.conftest import API_KEY, register
from tests.sip.kamailio import start_config

EXAMPLE = Path(__file__).resolve().parents[2] / "sip" / "examples" / "kamailio-resume.cfg"
RTP_SPAN = 40  # ports of each worker's RTP range
ROUTE = "te:route:sip:"  # the key the example reads: the default coordination.key_prefix


@pytest.fixture
def redis() -> Iterator[RedisProcess]:
    """A private server: the workers use the default key prefix, as the example reads."""
    with start_redis() as server:
        yield server


@dataclass
class Cluster:
    a: ServeProcess
    b: ServeProcess
    b_port: int
    kamailio_port: int
    a_rtp: range
    b_rtp: range
    coordinator: RedisCoordinator


def worker(name: str, sip_port: int, rtp: range, proxy: str, redis: str, hook: str) -> Any:
    return {
        "api": {"private_key": API_KEY},
        # one public URL (the load balancer in front of both): a drain moves calls only then
        "server": {"worker_id": name, "public_url": "http://edge.test", "drain_move_after_s": 0.5},
        "coordination": {"redis_url": redis},
        "webhooks": {"allow_private_targets": True, "signing_secret": "whsec_resume_sip_01"},
        "sip": {
            "enabled": True,
            "bind_host": "127.0.0.1",
            "port": sip_port,
            "rtp_port_min": rtp[0],
            "rtp_port_max": rtp[-1],
            "dialog_proxy": proxy,
        },
        "agents": {
            "echo": {"prompt": "You echo.", "first_message": "Hi", "session_data_webhook": hook}
        },
    }


@contextlib.asynccontextmanager
async def cluster(
    redis: RedisProcess, receiver: Receiver, tmp_path: Path
) -> AsyncIterator[Cluster]:
    """Workers A and B behind Kamailio (the example as shipped), on one Redis."""
    kamailio_port, a_port, b_port = free_port(), free_port(), free_port()
    proxy_uri = f"sip:127.0.0.1:{kamailio_port}"
    low = free_port() // 2 * 2
    a_rtp, b_rtp = range(low, low + RTP_SPAN), range(low + RTP_SPAN, low + 2 * RTP_SPAN)
    hook = receiver.url
    a = start_serve_process(
        worker("worker-a", a_port, a_rtp, proxy_uri, redis.url, hook), tmp_path / "a"
    )
    b = start_serve_process(
        worker("worker-b", b_port, b_rtp, proxy_uri, redis.url, hook), tmp_path / "b"
    )
    workers = tmp_path / "workers.list"
    workers.write_text(f"1 sip:127.0.0.1:{a_port}\n")
    coordinator = RedisCoordinator.from_url(redis.url)
    proxy = None
    try:
        proxy = await start_config(
            tmp_path,
            EXAMPLE,
            kamailio_port,
            LISTEN=f"udp:127.0.0.1:{kamailio_port}",
            PROXY_ALIAS=f"127.0.0.1:{kamailio_port}",
            REDIS=f'"name=edge;addr=127.0.0.1;port={redis.port};db=0"',
            WORKERS=f'"{workers}"',
        )
        yield Cluster(a, b, b_port, kamailio_port, a_rtp, b_rtp, coordinator)
    finally:
        await coordinator.close()
        if proxy is not None:
            await proxy.stop()
        for edge in (a, b):
            stop_serve_process(edge)


def loud(datagram: Datagram) -> bool:
    """A PCMU/PCMA packet whose 20 ms are the agent's voice (not the edge's silence)."""
    payload = datagram.payload
    pt = payload[1] & 0x7F
    if len(payload) < 172 or pt not in (0, 8):
        return False
    pcm = (audioop.ulaw2lin if pt == 0 else audioop.alaw2lin)(payload[12:], 2)
    return audioop.rms(pcm, 2) > 300


def audio(datagrams: list[Datagram], ports: range) -> list[Datagram]:
    """The G.711 RTP a worker whose RTP range is ``ports`` sent to the caller."""
    return [
        d
        for d in datagrams
        if d.source[1] in ports
        and len(d.payload) > 12
        and d.payload[0] >> 6 == 2
        and d.payload[1] & 0x7F in (0, 8)
    ]


async def speaking(capture: Capture, ports: range) -> None:
    """Until the agent's voice is what the worker on ``ports`` sends (its last packets)."""
    for _ in range(600):
        sent = audio(capture.datagrams(), ports)
        if len(sent) > 5 and all(loud(d) for d in sent[-5:]):
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the agent never spoke")


async def dialog_kept(coordinator: RedisCoordinator, call_id: str) -> dict[str, Any]:
    """The SIP dialog in the call's live state, once its worker has written it."""
    for _ in range(300):
        live = await coordinator.get_live(call_id)
        network = live.doc.get("network") if live is not None else None
        if network:
            return dict(network)
        await asyncio.sleep(0.05)
    raise AssertionError("the call's live state never held its dialog")


async def moved_call(
    c: Cluster, receiver: Receiver, tmp_path: Path, break_call: Any, cause: str
) -> None:
    """baresip calls A through Kamailio; ``break_call(call_id)`` takes A away mid-speech;
    the call goes on from B (module docstring); the gap is printed."""
    call_id = (await register(c.a))["call_id"]
    phone = tmp_path / "baresip"
    phone.mkdir()
    async with Capture(tmp_path / "rtp.pcap", c.a_rtp[0], c.b_rtp[-1]) as capture:
        dialled = asyncio.create_task(
            # the caller speaks at 0-2.8 s and again at 6.8-9.6 s, after the move
            baresip.dial(
                f"sip:{call_id}@127.0.0.1:{c.kamailio_port}", phone, "udp", 15, again_after_s=4
            )
        )
        dialog = await dialog_kept(c.coordinator, call_id)  # A's live state has the dialog
        await speaking(capture, c.a_rtp)
        broken_at = time.time()
        await break_call(call_id)
        await wait_for(lambda: "SIP call taken over" in c.b.log, within=15)
        route = await c.coordinator._redis.get(ROUTE + dialog["call_id"])
        assert route == f"sip:127.0.0.1:{c.b_port}"  # what Kamailio reads for the dialog now
        call = await dialled
    assert call.returncode == 0, call.log[-3000:]
    assert "got re-INVITE (SDP Offer)" in call.log  # baresip answered B's re-INVITE

    await wait_for(lambda: receiver.received, within=15)
    await asyncio.sleep(1.0)  # a second webhook would have come by now
    [payload] = receiver.received
    assert (payload["call_id"], payload["call_status"]) == (call_id, "user-ended"), payload
    [move] = payload["migrations"]
    assert (move["from_worker"], move["to_worker"], move["cause"]) == (
        "worker-a",
        "worker-b",
        cause,
    )
    chat = json.loads(payload["chat"])
    assert chat[0] == {**chat[0], "role": "assistant", "content": "Hi"}  # said on A
    assert "caller spoke" in json.dumps(chat)  # B's agent heard baresip after the move
    assert await c.coordinator._redis.get(ROUTE + dialog["call_id"]) is None  # over: dropped
    assert "Traceback" not in c.b.log, c.b.log[-3000:]

    datagrams = capture.datagrams()
    from_a, from_b = audio(datagrams, c.a_rtp), audio(datagrams, c.b_rtp)
    assert {d.dest for d in from_a} == {d.dest for d in from_b}  # to baresip's one port
    voice_a, voice_b = [d for d in from_a if loud(d)], [d for d in from_b if loud(d)]
    assert voice_a and voice_b  # the agent spoke from A, and again from B
    print(
        f"\n{cause}: A taken away at 0 ms; A's last RTP {ms(from_a[-1].at - broken_at)}, its "
        f"last voice {ms(voice_a[-1].at - broken_at)}; B's first RTP "
        f"{ms(from_b[0].at - broken_at)}, its first voice {ms(voice_b[0].at - broken_at)}; "
        f"RTP gap {ms(from_b[0].at - from_a[-1].at)}, voice gap "
        f"{ms(voice_b[0].at - voice_a[-1].at)}; migrations.gap_ms {move['gap_ms']}"
    )


def ms(seconds: float) -> str:
    return f"{1000 * seconds:+.0f} ms"


async def test_sigkilled_worker_a_call_goes_on_from_worker_b_through_kamailio(
    redis: RedisProcess, receiver: Receiver, tmp_path: Path
) -> None:
    async with cluster(redis, receiver, tmp_path) as c:

        async def kill(call_id: str) -> None:
            c.a.process.kill()
            c.a.process.wait(5)

        await moved_call(c, receiver, tmp_path, kill, "crash")


async def test_a_draining_worker_moves_its_sip_call_to_another(
    redis: RedisProcess, receiver: Receiver, tmp_path: Path
) -> None:
    async with cluster(redis, receiver, tmp_path) as c:

        async def drain(call_id: str) -> None:
            c.a.process.send_signal(signal.SIGTERM)

        await moved_call(c, receiver, tmp_path, drain, "drain")
        assert c.a.process.wait(15) == 0  # it moved its call and exited
        assert "SIP call handed to worker-b" in c.a.log
