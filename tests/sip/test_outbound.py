"""The edge places SIP calls (``POST /start_outbound_call`` from a SIP number) to real sipp
callees: digest as a client, audio both ways, busy, no answer (CANCEL), a hang-up through
the API while it rings, and a 503 followed by the next host of the trunk's SRV records;
and to a ``sip:`` URI where baresip answers, with audio both ways.

Each callee is a sipp UAS (``sip/uas_*.xml``) on a free port of 127.0.0.1; the media of
the answering one is the test's own RTP socket (``-set rtp_port``), which hears the
agent's greeting and speaks back.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from telephony_edge.sip.rtp import parse_rtp
from tests.conftest import Edge, Receiver, free_port, read_wav, wait_for
from tests.sip.baresip import baresip_binary
from tests.sip.baresip_callee import answering
from tests.sip.conftest import API_KEY, SCENARIOS, sip_test_settings, sipp_binary
from tests.sip.dns_server import start_dns
from tests.sip.test_sipp import CallerMedia, loud, speak_pcma

FROM = "+15550100"
TO = "+15557777"
NUMBERS = {FROM: {"provider": "sip", "agent_id": "echo", "region": "local"}}


def carrier(*proxies: str, **outbound: Any) -> dict[str, Any]:
    return {
        "trunks": {
            "carrier": {
                "numbers": [FROM],
                "outbound": {
                    "proxies": list(proxies),
                    "domain": "carrier.test",
                    "username": "edge",
                    "password": "s3cret",
                    **outbound,
                },
            }
        }
    }


async def outbound_edge(
    make_edge: Callable[..., Any], receiver: Receiver, sip: dict[str, Any]
) -> Edge:
    sipp_binary()
    settings = sip_test_settings(
        receiver,
        sip,
        regions={"local": {"public_url": "http://127.0.0.1:8080"}},
        numbers=NUMBERS,
    )
    edge: Edge = await make_edge(settings)
    return edge


async def callee(scenario: str, port: int, cwd: Path, *extra: str) -> asyncio.subprocess.Process:
    """A sipp UAS on 127.0.0.1:``port`` playing ``sip/<scenario>``."""
    args = [
        "-sf", str(SCENARIOS / scenario),
        "-i", "127.0.0.1", "-mi", "127.0.0.1", "-p", str(port),
        "-m", "1", "-nostdin", "-timeout", "30", "-timeout_error",
        "-trace_err", "-error_file", str(cwd / f"sipp_{port}.log"),
        *extra,
    ]  # fmt: skip
    return await asyncio.create_subprocess_exec(
        sipp_binary(),
        *args,
        cwd=cwd,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )


async def callee_done(process: asyncio.subprocess.Process, cwd: Path, port: int) -> None:
    _, stderr = await asyncio.wait_for(process.communicate(), 40)
    errors = cwd / f"sipp_{port}.log"
    detail = errors.read_text(errors="replace")[-2000:] if errors.exists() else ""
    assert process.returncode == 0, f"sipp exit {process.returncode}: {stderr!r}\n{detail}"


async def api(edge: Edge, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.request(
            method,
            str(edge.url(path)),
            json=body,
            headers={"Authorization": f"Bearer {API_KEY}"},
        ) as resp,
    ):
        return resp.status, await resp.json()


async def place(edge: Edge, to: str = TO) -> str:
    status, body = await api(
        edge,
        "POST",
        "/start_outbound_call",
        {"from_phone": FROM, "to_phone": to, "agent_id": "echo"},
    )
    assert status == 200, body
    assert body["provider_call_id"]
    call_id: str = body["call_id"]
    return call_id


async def settled(receiver: Receiver, call_id: str) -> dict[str, Any]:
    await wait_for(lambda: any(p["call_id"] == call_id for p in receiver.received), within=20)
    [payload] = [p for p in receiver.received if p["call_id"] == call_id]
    return payload


async def test_answered_call_with_digest_and_audio_both_ways(
    make_edge: Callable[..., Any], receiver: Receiver, tmp_path: Path
) -> None:
    port = free_port()
    edge = await outbound_edge(make_edge, receiver, carrier(f"127.0.0.1:{port}"))
    loop = asyncio.get_running_loop()
    _, media = await loop.create_datagram_endpoint(CallerMedia, local_addr=("127.0.0.1", 0))
    rtp_port = media.transport.get_extra_info("sockname")[1]  # type: ignore[union-attr]
    uas = await callee(
        "uas_answer.xml", port, tmp_path, "-set", "rtp_port", str(rtp_port), "-d", "6000"
    )
    await asyncio.sleep(0.3)  # sipp binds its port

    call_id = await place(edge)
    # the edge's RTP starts at the answer; the callee speaks back to where it comes from
    await wait_for(lambda: media.received, within=15)
    edge_rtp = media.received[0][1]
    speech = read_wav("speech_table.wav")[: 640 * 150]
    await speak_pcma(media, edge_rtp, speech)
    await callee_done(uas, tmp_path, port)
    payload = await settled(receiver, call_id)

    assert payload["call_status"] == "user-ended"  # the callee's BYE
    heard = [parse_rtp(data) for data, _ in media.received]
    assert sum(loud(p.payload) for p in heard if p is not None) > 10  # the agent's greeting
    assert "caller spoke" in json.dumps(payload.get("chat"))  # the agent heard the callee
    status, record = await api(edge, "GET", f"/calls/{call_id}")
    assert status == 200 and record["direction"] == "outbound"
    assert record["to"] == TO and record["from"] == FROM
    assert record["provider_status"] == "in-progress"
    media.transport.close()  # type: ignore[union-attr]


async def test_busy_callee_ends_the_call_busy(
    make_edge: Callable[..., Any], receiver: Receiver, tmp_path: Path
) -> None:
    port = free_port()
    edge = await outbound_edge(make_edge, receiver, carrier(f"127.0.0.1:{port}"))
    uas = await callee("uas_busy.xml", port, tmp_path)
    await asyncio.sleep(0.3)
    call_id = await place(edge)
    await callee_done(uas, tmp_path, port)
    payload = await settled(receiver, call_id)
    assert payload["call_status"] == "error"
    assert payload["error_message"] == "the called party was busy"
    _, record = await api(edge, "GET", f"/calls/{call_id}")
    assert record["provider_status"] == "busy"


async def test_no_answer_is_cancelled_at_the_ring_timeout(
    make_edge: Callable[..., Any], receiver: Receiver, tmp_path: Path
) -> None:
    port = free_port()
    sip = {**carrier(f"127.0.0.1:{port}"), "outbound_ring_timeout_s": 2.0}
    edge = await outbound_edge(make_edge, receiver, sip)
    uas = await callee("uas_no_answer.xml", port, tmp_path)
    await asyncio.sleep(0.3)
    call_id = await place(edge)
    await callee_done(uas, tmp_path, port)  # it got the CANCEL, answered 487, got the ACK
    payload = await settled(receiver, call_id)
    assert payload["call_status"] == "error"
    assert payload["error_message"] == "the called party did not answer"
    _, record = await api(edge, "GET", f"/calls/{call_id}")
    assert record["provider_status"] == "no-answer"


async def test_hangup_through_the_api_while_ringing_cancels(
    make_edge: Callable[..., Any], receiver: Receiver, tmp_path: Path
) -> None:
    port = free_port()
    edge = await outbound_edge(make_edge, receiver, carrier(f"127.0.0.1:{port}"))
    uas = await callee("uas_no_answer.xml", port, tmp_path)
    await asyncio.sleep(0.3)
    call_id = await place(edge)
    await ringing(edge, call_id)
    status, body = await api(edge, "POST", f"/calls/{call_id}/hangup")
    assert status == 200, body
    await callee_done(uas, tmp_path, port)
    payload = await settled(receiver, call_id)
    assert payload["call_status"] == "api-ended"


async def ringing(edge: Edge, call_id: str) -> None:
    """Until the call's record says the callee's phone rings (its 180)."""
    for _ in range(200):
        record = await edge.services.call_service.get(call_id)
        if record is not None and record.provider_status == "ringing":
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the call never rang")


async def test_503_fails_over_to_the_next_srv_target(
    make_edge: Callable[..., Any], receiver: Receiver, tmp_path: Path
) -> None:
    first, second = free_port(), free_port()
    zone = {
        ("_sip._udp.carrier.test", "SRV"): [
            f"10 0 {first} a.carrier.test.",
            f"20 0 {second} b.carrier.test.",
        ],
        ("a.carrier.test", "A"): ["127.0.0.1"],
        ("b.carrier.test", "A"): ["127.0.0.1"],
    }
    dns = await start_dns(zone)
    sip = {**carrier("carrier.test"), "dns_servers": [dns.address]}
    edge = await outbound_edge(make_edge, receiver, sip)
    loop = asyncio.get_running_loop()
    _, media = await loop.create_datagram_endpoint(CallerMedia, local_addr=("127.0.0.1", 0))
    rtp_port = media.transport.get_extra_info("sockname")[1]  # type: ignore[union-attr]
    unavailable = await callee("uas_unavailable.xml", first, tmp_path)
    answering = await callee(
        "uas_answer.xml", second, tmp_path, "-set", "rtp_port", str(rtp_port), "-d", "1000"
    )
    await asyncio.sleep(0.3)
    call_id = await place(edge)
    await callee_done(unavailable, tmp_path, first)
    await callee_done(answering, tmp_path, second)
    payload = await settled(receiver, call_id)
    assert payload["call_status"] == "user-ended"
    assert ("_sip._udp.carrier.test", "SRV") in dns.queries
    media.transport.close()  # type: ignore[union-attr]
    dns.close()


async def test_a_baresip_callee_answers_a_sip_uri_with_audio_both_ways(
    make_edge: Callable[..., Any], receiver: Receiver, tmp_path: Path
) -> None:
    baresip_binary()
    edge = await outbound_edge(make_edge, receiver, {})
    phone = await answering(tmp_path, seconds=8)
    call_id = await place(edge, to=phone.uri)
    call = await phone.finished(within=25)  # it quits after 8 s, hanging up
    assert "Call established" in call.log, call.log[-3000:]
    assert call.heard_seconds() > 0.5, f"baresip heard {call.heard_seconds()} s of the agent"
    payload = await settled(receiver, call_id)
    assert payload["call_status"] == "user-ended"
    assert "caller spoke" in json.dumps(payload.get("chat"))  # the agent heard baresip
    _, record = await api(edge, "GET", f"/calls/{call_id}")
    assert record["to"] == phone.uri and record["direction"] == "outbound"


async def test_hangup_through_another_worker_while_ringing_cancels(
    make_edge: Callable[..., Any], receiver: Receiver, redis_server: Any, tmp_path: Path
) -> None:
    """Workers A and B on one Redis: A places the call, B is asked to hang it up while it
    rings; B ends the record, A reads that and CANCELs (the callee sees the CANCEL)."""
    port = free_port()
    prefix = f"te-out-{uuid.uuid4().hex[:12]}:"
    workers = []
    for name in ("worker-a", "worker-b"):
        settings = sip_test_settings(
            receiver,
            carrier(f"127.0.0.1:{port}"),
            server={"worker_id": name},
            coordination={"redis_url": redis_server.url, "key_prefix": prefix},
            regions={"local": {"public_url": "http://127.0.0.1:8080"}},
            numbers=NUMBERS,
        )
        workers.append(await make_edge(settings))
    a, b = workers
    uas = await callee("uas_no_answer.xml", port, tmp_path)
    await asyncio.sleep(0.3)
    call_id = await place(a)
    await ringing(b, call_id)
    status, body = await api(b, "POST", f"/calls/{call_id}/hangup")
    assert status == 200, body
    await callee_done(uas, tmp_path, port)  # A's CANCEL reached the callee
    payload = await settled(receiver, call_id)
    assert payload["call_status"] == "api-ended"
    _, record = await api(a, "GET", f"/calls/{call_id}")
    assert record["provider_status"] == "canceled"
