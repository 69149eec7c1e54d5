"""Two ``telephony-edge serve`` workers on a private ``redis-server`` behind Kamailio running
the shipped ``sip/examples/kamailio-resume.cfg``, and how to read the RTP they send the callers
(a loopback capture): the harness of the SIP call-move tests (issue 24).

The dispatcher lists worker A alone, so new calls go there; worker B takes them over.
"""

from __future__ import annotations

import asyncio
import audioop
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from telephony_edge.coord.redis import RedisCoordinator
from tests.conftest import (
    Receiver,
    ServeProcess,
    free_port,
    start_serve_process,
    stop_serve_process,
)
from tests.coord.redis_servers import redis_server
from tests.sip.capture import Datagram
from tests.sip.conftest import API_KEY
from tests.sip.kamailio import Proxy, start_config

EXAMPLE = Path(__file__).resolve().parents[2] / "sip" / "examples" / "kamailio-resume.cfg"
ROUTE = "te:route:sip:"  # the key the example reads: the default coordination.key_prefix


@dataclass
class Cluster:
    a: ServeProcess
    b: ServeProcess
    b_port: int
    kamailio_port: int
    a_rtp: range
    b_rtp: range
    coordinator: RedisCoordinator
    proxy: Proxy

    @property
    def rtp(self) -> range:
        """Both workers' RTP ports (callers take theirs elsewhere)."""
        return range(self.a_rtp[0], self.b_rtp[-1] + 1)

    def sent(self, datagrams: list[Datagram], ports: range) -> list[Datagram]:
        """The G.711 RTP the worker whose RTP range is ``ports`` sent to the callers."""
        return [d for d in audio(datagrams, ports) if d.dest[1] not in self.rtp]


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
async def cluster(receiver: Receiver, tmp_path: Path, rtp_span: int = 40) -> AsyncIterator[Cluster]:
    """Workers A and B (``rtp_span`` RTP ports each: two a call) behind Kamailio (the example
    as shipped), on one private Redis (the workers use the default key prefix, as the example
    reads)."""
    with redis_server() as redis:
        kamailio_port, a_port, b_port = free_port(), free_port(), free_port()
        proxy_uri = f"sip:127.0.0.1:{kamailio_port}"
        low = free_port() // 2 * 2
        a_rtp, b_rtp = range(low, low + rtp_span), range(low + rtp_span, low + 2 * rtp_span)
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
            yield Cluster(a, b, b_port, kamailio_port, a_rtp, b_rtp, coordinator, proxy)
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
    """The G.711 RTP a worker whose RTP range is ``ports`` sent to the callers."""
    return [
        d
        for d in datagrams
        if d.source[1] in ports
        and len(d.payload) > 12
        and d.payload[0] >> 6 == 2
        and d.payload[1] & 0x7F in (0, 8)
    ]


async def dialog_kept(coordinator: RedisCoordinator, call_id: str) -> dict[str, Any]:
    """The SIP dialog in the call's live state, once its worker has written it."""
    for _ in range(600):
        live = await coordinator.get_live(call_id)
        network = live.doc.get("network") if live is not None else None
        if network:
            return dict(network)
        await asyncio.sleep(0.05)
    raise AssertionError("the call's live state never held its dialog")


def ms(seconds: float) -> str:
    return f"{1000 * seconds:+.0f} ms"
