"""Hostile input against a real ``telephony-edge serve`` with every network on.

The companion of ``test_hostile.py`` (whose helpers and config it builds on)
for what arrived later: signed recording links, Twilio's and Vonage's
machine-detection callbacks, ``/status``, WebRTC offers and data channel,
SIP over UDP and ``register_sip_call``, and ``voicemail``/``recording`` in a
call's ``agent_config``. One process is shared by the module; every test
asserts the protocol's answer, and that the process still serves with no
traceback and no ERROR line in its log.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest
from aiortc import RTCSessionDescription
from yarl import URL

from telephony_edge.recording import signing
from telephony_edge.sip.message import Response
from telephony_edge.sip.parse import parse_message
from telephony_edge.twilio.signature import SIGNATURE_HEADER, compute_signature
from telephony_edge.vonage.context import CALL_ID_HEADER
from telephony_edge.vonage.signature import query_payload, sign
from telephony_edge.vonage.simulator import SimulatedVonageCall
from telephony_edge.webrtc.channel import MAX_MESSAGE_BYTES
from tests.conftest import ServeProcess, free_port, wait_for
from tests.sip import wire
from tests.sip.test_udp_edge import Caller, Socket, media_port, open_socket, sdp
from tests.test_hostile import (
    AUTH,
    bad_input,
    fixture_session,  # noqa: F401  (fixture)
    hostile_config,
    raw_status,
)
from tests.twilio.harness import AUTH_TOKEN, OUTBOUND_NUMBER
from tests.webrtc.test_offer import Client

RECORDING_SECRET = "recording-url-secret-for-hostile-tests"
VONAGE_SECRET = "vonage-signature-secret-hostile-0001"
VONAGE_NUMBER = "+15555550101"
SIP_NUMBER = "+15555550102"
TRUNK_PASSWORD = "trunk-password-hostile"
SIP_PORT = free_port()
RECORDED = "call_hostile_recorded"
RECORDED_BYTES = b"RIFF-not-really-a-wav-but-the-bytes-on-disk"
SECRET_BYTES = b"a file outside the recordings directory"


@pytest.fixture(scope="module")
def recordings(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The recordings directory (one finished recording), with a secret file next to it."""
    root = tmp_path_factory.mktemp("hostile-recordings")
    directory = root / "recordings"
    directory.mkdir()
    (directory / f"{RECORDED}.wav").write_bytes(RECORDED_BYTES)
    for name in ("secret.wav", "secret", "etc-passwd.wav"):
        (root / name).write_bytes(SECRET_BYTES)
    return directory


@pytest.fixture(scope="module")
def edge(serve_process: Any, recordings: Path) -> ServeProcess:
    config = hostile_config()
    rtp_low = free_port() // 2 * 2
    config.update(
        recording={"directory": str(recordings), "url_secret": RECORDING_SECRET},
        vonage={"enabled": True, "signature_secret": VONAGE_SECRET},
        sip={
            "enabled": True,
            "bind_host": "127.0.0.1",
            "port": SIP_PORT,
            "rtp_port_min": rtp_low,
            "rtp_port_max": rtp_low + 40,
            "trunks": {
                "pbx": {"cidrs": ["127.0.0.1/32"], "username": "pbx", "password": TRUNK_PASSWORD}
            },
        },
        webrtc={
            "enabled": True,
            "advertised_addresses": ["127.0.0.1"],
            "allowed_peer_networks": ["127.0.0.0/8"],
        },
    )
    config["numbers"].update(
        {
            VONAGE_NUMBER: {"provider": "vonage", "agent_id": "demo", "region": "local"},
            SIP_NUMBER: {"provider": "sip", "agent_id": "demo", "region": "local"},
        }
    )
    started: ServeProcess = serve_process(config)
    return started


async def call_state(edge: ServeProcess, session: aiohttp.ClientSession, call_id: str) -> str:
    async with session.get(edge.base_url + f"/calls/{call_id}", headers=AUTH) as resp:
        state: str = (await resp.json())["state"]
    return state


async def ended(
    edge: ServeProcess, session: aiohttp.ClientSession, call_id: str, within: float = 5.0
) -> None:
    """Wait until the call's record says ``ended``; fail after ``within`` s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while await call_state(edge, session, call_id) != "ended":
        assert loop.time() < deadline, f"{call_id} did not end"
        await asyncio.sleep(0.1)


# -- GET /recordings/{call_id}: signed links, never a file outside the directory ----------


def link(call_id: str, **query: str) -> bytes:
    """A raw request line for ``call_id`` (already percent-encoded as wanted) and ``query``."""
    path = f"/recordings/{call_id}" + (f"?{urlencode(query)}" if query else "")
    return f"GET {path} HTTP/1.1\r\nHost: edge\r\nConnection: close\r\n\r\n".encode()


def signed(call_id: str, expires: float | None = None) -> dict[str, str]:
    when = int(time.time() + 600 if expires is None else expires)
    return {"expires": str(when), "sig": signing.signature(RECORDING_SECRET, call_id, when)}


async def test_a_valid_link_serves_the_recording(
    edge: ServeProcess, session: aiohttp.ClientSession
) -> None:
    url = edge.base_url + f"/recordings/{RECORDED}"
    async with session.get(url, params=signed(RECORDED)) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "audio/wav"
        assert await resp.read() == RECORDED_BYTES
    edge.assert_healthy()


FUTURE = str(int(time.time()) + 3600)


@pytest.mark.parametrize(
    "query",
    [
        {},
        {"expires": FUTURE},
        {"sig": "0" * 64},
        {"expires": FUTURE, "sig": "zz"},
        {"expires": FUTURE, "sig": "\xff\xfe"},
        {"expires": FUTURE, "sig": "\x00" * 64},
        {"expires": FUTURE, "sig": "a" * 6000},
        {"expires": "soon", "sig": "0" * 64},
        {"expires": "9" * 5000, "sig": "0" * 64},
        {"expires": "1e12", "sig": "0" * 64},
        {"expires": "-1", "sig": "0" * 64},
        {"expires": "\x00", "sig": "0" * 64},
        signed(RECORDED, expires=time.time() - 10),  # expired
        signed("call_someone_else"),  # forged: another call's link
        {"expires": str(int(FUTURE) + 1), "sig": signed(RECORDED, int(FUTURE))["sig"]},
    ],
)
async def test_bad_recording_links_are_403(edge: ServeProcess, query: dict[str, str]) -> None:
    refused = edge.log.count("recording link refused")
    assert await raw_status(edge, link(RECORDED, **query)) == 403
    assert edge.log.count("recording link refused") == refused + 1
    edge.assert_healthy()


@pytest.mark.parametrize(
    "headers",
    [
        {"Range": "bytes=999999-"},
        {"Range": "bytes=5-2"},
        {"Range": "bytes=abc"},
        {"Range": "bytes=" + ",".join(["0-1"] * 500)},
        {"Range": "lines=1-2"},
        {"If-Modified-Since": "yesterday"},
        {"If-None-Match": '"' * 100},
        {"If-Range": "garbage", "Range": "bytes=0-3"},
    ],
)
async def test_garbage_range_headers_on_a_valid_link_never_500(
    edge: ServeProcess, session: aiohttp.ClientSession, headers: dict[str, str]
) -> None:
    url = edge.base_url + f"/recordings/{RECORDED}"
    async with session.get(url, params=signed(RECORDED), headers=headers) as resp:
        assert resp.status in (200, 206, 304, 400, 416), resp.status
    edge.assert_healthy()


TRAVERSALS = [
    "..%2Fsecret",
    "..%2F..%2F" + "etc-passwd",
    "..%2Fsecret.wav",
    "%2E%2E%2Fsecret",
    "..%5Csecret",
    "call%00",
    "call%00.wav",
    RECORDED + "%00",
    "%ED%A0%80",  # a UTF-8 surrogate
    "%FF%FE",
    "a" * 5000,
    "call_" + "%C3%A9" * 10,
]


@pytest.mark.parametrize("raw_id", TRAVERSALS)
async def test_odd_call_ids_are_403_or_404_and_never_a_file(
    edge: ServeProcess, raw_id: str
) -> None:
    """Unsigned for them: 403; a valid signature for what the edge decodes still finds nothing."""
    assert await raw_status(edge, link(raw_id, **signed(RECORDED))) == 403
    seen = URL("/recordings/" + raw_id, encoded=True).path.removeprefix("/recordings/")
    assert await raw_status(edge, link(raw_id, **signed(seen))) == 404
    edge.assert_healthy()


# -- POST /twilio/amd: Twilio's asynchronous machine detection ----------------------------


async def post_amd(
    edge: ServeProcess,
    session: aiohttp.ClientSession,
    fields: dict[str, str],
    *,
    query: str = "?call_id=call_unknown",
    signature: str | None = None,
) -> int:
    """Twilio's AMD callback with ``fields``, signed unless ``signature`` says otherwise."""
    url = edge.base_url + "/twilio/amd" + query
    if signature is None:
        signature = compute_signature(AUTH_TOKEN, url, fields)
    headers = {SIGNATURE_HEADER: signature} if signature else {}
    async with session.post(url, data=fields, headers=headers) as resp:
        return resp.status


@pytest.mark.parametrize(
    ("fields", "signature", "status"),
    [
        ({"AnsweredBy": "human"}, "", 403),
        ({"AnsweredBy": "human"}, "Zm9yZ2Vk", 403),
        ({}, None, 400),
        ({"AnsweredBy": ""}, None, 400),
        ({"AnsweredBy": "robot"}, None, 400),
        ({"AnsweredBy": "HUMAN"}, None, 400),
        ({"AnsweredBy": "h" * 5000}, None, 400),
        ({"AnsweredBy": "machine_end_beep\x00"}, None, 400),
    ],
)
async def test_bad_amd_callbacks_are_403_or_400(
    edge: ServeProcess,
    session: aiohttp.ClientSession,
    fields: dict[str, str],
    signature: str | None,
    status: int,
) -> None:
    assert await post_amd(edge, session, fields, signature=signature) == status
    edge.assert_healthy()


@pytest.mark.parametrize("call_id", ["call_unknown", "call_" + "x" * 4000, ""])
async def test_an_amd_result_for_no_call_is_204_and_logged(
    edge: ServeProcess, session: aiohttp.ClientSession, call_id: str
) -> None:
    """Nothing to deliver it to: 204 (Twilio does not retry it), a warning with the call id."""
    fields = {"AnsweredBy": "machine_end_beep", "MachineDetectionDuration": "9" * 5000}
    query = f"?call_id={call_id}" if call_id else ""
    dropped = edge.log.count("amd result for a call without media")
    assert await post_amd(edge, session, fields, query=query) == 204
    if call_id:
        assert edge.log.count("amd result for a call without media") == dropped + 1
        assert f'"call_id": "{call_id}"' in edge.log
    edge.assert_healthy()


async def test_an_oversize_amd_body_is_413(
    edge: ServeProcess, session: aiohttp.ClientSession
) -> None:
    fields = {"AnsweredBy": "human", "Pad": "x" * (2 * 1024 * 1024)}
    assert await post_amd(edge, session, fields, signature="c2lnbmVk") == 413
    edge.assert_healthy()


# -- the Vonage event webhook: machine detection with garbage -----------------------------


async def vonage_call(edge: ServeProcess, session: aiohttp.ClientSession) -> tuple[Any, str]:
    """An inbound Vonage call answered by the edge (its socket not opened); its call id."""
    call = SimulatedVonageCall(
        session, edge.base_url, to=VONAGE_NUMBER, signature_secret=VONAGE_SECRET
    )
    await call.post_answer()
    assert call.result.answer is not None and call.result.answer.websocket is not None
    return call, call.result.answer.websocket.headers[CALL_ID_HEADER]


async def post_vonage_event(
    edge: ServeProcess, session: aiohttp.ClientSession, body: bytes, token: str | None
) -> int:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    async with session.post(edge.base_url + "/vonage/event", data=body, headers=headers) as r:
        return r.status


@pytest.mark.parametrize(
    ("status", "sub_state"),
    [
        ("machine", "beep_stop"),
        ("machine", "x" * 5000),
        ("human", "beep_start\x00"),
    ],
)
async def test_vonage_machine_detection_with_a_bad_sub_state_is_400(
    edge: ServeProcess, session: aiohttp.ClientSession, status: str, sub_state: str
) -> None:
    call, call_id = await vonage_call(edge, session)
    assert await call.post_event(status, sub_state=sub_state) == 400
    assert f'"call_id": "{call_id}"' in edge.log  # the refusal's log line names the call
    assert await call_state(edge, session, call_id) == "created"  # the call is untouched
    edge.assert_healthy()


@pytest.mark.parametrize(
    "query",
    [
        {"call_id": "call_unknown"},
        {"call_id": "x" * 4000},
        {"to": "\x00" * 10, "from": "\xff", "uuid": "u"},
        {"to": "+" + "9" * 300, "from": "anonymous", "uuid": "u" * 3000},
        {"to": VONAGE_NUMBER.removeprefix("+"), "from": "1" * 5000, "uuid": ""},
    ],
)
async def test_vonage_answers_with_garbage_get_an_ncco(
    edge: ServeProcess, session: aiohttp.ClientSession, query: dict[str, str]
) -> None:
    """Signed but odd: an NCCO (a talk, or the socket for a genuine number), never a 500."""
    token = sign(VONAGE_SECRET, query_payload(query.items()))  # Vonage hashes a GET's query
    headers = {"Authorization": f"Bearer {token}"}
    url = edge.base_url + "/vonage/answer"
    async with session.get(url, params=query, headers=headers) as resp:
        assert resp.status == 200
        actions = await resp.json()
    assert isinstance(actions, list) and actions[0]["action"] in ("talk", "connect")
    edge.assert_healthy()


@pytest.mark.parametrize(
    ("body", "signed", "status"),
    [
        (b'{"status": "machine", "uuid": "u"}', False, 401),
        (b"not json", True, 400),
        (b"[1, 2]", True, 400),
        (b"[" * 5000 + b"]" * 5000, True, 400),
        (b'{"status": "machine", "sub_state": "\\ud800", "uuid": "u"}', True, 400),
        (b'{"status": "machine", "sub_state": {"x": 1}, "uuid": "u"}', True, 204),
        (b'{"status": ["machine"], "uuid": "u"}', True, 204),
        (b'{"status": "s' + b"x" * 5000 + b'", "uuid": "u"}', True, 204),
    ],
)
async def test_vonage_events_unsigned_or_garbled(
    edge: ServeProcess, session: aiohttp.ClientSession, body: bytes, signed: bool, status: int
) -> None:
    token = sign(VONAGE_SECRET, body) if signed else None
    assert await post_vonage_event(edge, session, body, token) == status
    edge.assert_healthy()


# -- GET /status ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", "Bearer wrong", "Basic " + AUTH["Authorization"], "Bearer " + "k" * 7000],
)
async def test_status_without_the_key_is_401(
    edge: ServeProcess, session: aiohttp.ClientSession, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    async with session.get(edge.base_url + "/status", headers=headers) as resp:
        assert resp.status == 401
        assert "error" in await resp.json()
    edge.assert_healthy()


async def test_a_header_past_the_limit_is_400_and_a_warning(edge: ServeProcess) -> None:
    request = (
        b"GET /status HTTP/1.1\r\nHost: edge\r\nConnection: close\r\nAuthorization: Bearer "
        + b"k" * 20000
        + b"\r\n\r\n"
    )
    before = bad_input(edge, "http")
    assert await raw_status(edge, request) == 400
    assert bad_input(edge, "http") == before + 1
    assert "unparseable HTTP request (LineTooLong): 400" in edge.log
    assert "k" * 50 not in edge.log  # the client's header is not copied into the log
    edge.assert_healthy()


@pytest.mark.parametrize(
    ("query", "accept", "content_type"),
    [
        ("?format=json", "", "application/json"),
        ("?format=xml", "", "text/html"),
        ("?format=" + "%FF" * 100, "", "text/html"),
        ("?format=json&format=html", "", "application/json"),
        ("", "application/json;q=garbage, */*", "application/json"),
        ("", "*/*" * 2000, "text/html"),
    ],
)
async def test_status_formats_never_500(
    edge: ServeProcess, session: aiohttp.ClientSession, query: str, accept: str, content_type: str
) -> None:
    headers = {**AUTH, "Accept": accept} if accept else AUTH
    url = URL(edge.base_url + "/status" + query, encoded=True)
    async with session.get(url, headers=headers) as resp:
        assert resp.status == 200
        assert resp.content_type == content_type
    edge.assert_healthy()


# -- POST /webrtc/offer and the data channel ----------------------------------------------

MINIMAL_OFFER = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"


async def post_offer(
    edge: ServeProcess, session: aiohttp.ClientSession, body: bytes, key: str | None = None
) -> tuple[int, dict[str, Any]]:
    auth = AUTH if key is None else {"Authorization": f"Bearer {key}"}
    headers = {**auth, "Content-Type": "application/json"}
    async with session.post(edge.base_url + "/webrtc/offer", data=body, headers=headers) as resp:
        return resp.status, await resp.json()


def offer_body(sdp: Any = MINIMAL_OFFER, kind: Any = "offer", **more: Any) -> bytes:
    return json.dumps({"agent_id": "demo", "offer": {"sdp": sdp, "type": kind}, **more}).encode()


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"[]", 400),
        (b'"offer"', 400),
        (b"null", 400),
        (b"{", 400),
        (json.dumps({"agent_id": "demo", "offer": "v=0"}).encode(), 400),
        (json.dumps({"agent_id": "demo"}).encode(), 400),
        (offer_body(kind="answer"), 400),
        (offer_body(kind=["offer"]), 400),
        (offer_body(sdp=5), 400),
        (offer_body(sdp=" \r\n "), 400),
        (offer_body(sdp="garbage"), 400),
        (offer_body(sdp="v=0\r\nm=video 9 RTP/AVP 96\r\n"), 400),
        (offer_body(sdp="v=0\r\nm=audio\r\nm=\r\na=\x00\r\n"), 400),
        (offer_body(sdp=MINIMAL_OFFER + "a=rtpmap:111 opus/48000/2\r\n" * 3), 400),
        (offer_body(sdp="v=0\r\n" + "m=audio 9 RTP/AVP 0\r\n" + "a=x\r\n" * 5000), 413),
        (offer_body(sdp=MINIMAL_OFFER + "a=" + "\u00e9" * 9000 + "\r\n"), 413),
        (offer_body(sdp=MINIMAL_OFFER + "a=\ud800\r\n"), 400),
        (offer_body(metadata={"name": "\ud800"}), 400),  # would reach the agent link
        (offer_body(agent_id="nobody"), 404),
        (offer_body(agent_id=["demo"]), 400),
        (offer_body(agent_config="x"), 400),
        (offer_body(include_metadata_in_prompt="yes"), 400),
    ],
)
async def test_bad_offers_are_4xx_with_the_reason(
    edge: ServeProcess, session: aiohttp.ClientSession, body: bytes, status: int
) -> None:
    got, answer = await post_offer(edge, session, body)
    assert got == status, answer
    assert "error" in answer
    edge.assert_healthy()


@pytest.mark.parametrize(
    ("find", "replace"),
    [
        ("a=mid:0", "a=mid:" + "m" * 3000),  # BUNDLE 0 1 then names a mid with no media
        ("a=group:BUNDLE 0 1", "a=group:BUNDLE 7 0 1"),
    ],
)
async def test_a_real_offer_with_a_bundle_of_unknown_mids_is_400(
    edge: ServeProcess, session: aiohttp.ClientSession, find: str, replace: str
) -> None:
    """aiortc would leave the call without a transport: a 500, then its connect task fails."""
    client = Client(events=True)
    try:
        offer = await client.offer()
    finally:
        await client.close()
    assert find in offer["sdp"]
    sdp = offer["sdp"].replace(find, replace)
    status, answer = await post_offer(edge, session, offer_body(sdp=sdp))
    assert status == 400, answer
    assert "BUNDLE" in answer["error"]
    edge.assert_healthy()


async def test_an_offer_with_a_wrong_key_is_401(
    edge: ServeProcess, session: aiohttp.ClientSession
) -> None:
    for key in ("wrong", "k" * 5000, "Bearer"):
        status, _ = await post_offer(edge, session, offer_body(), key=key)
        assert status == 401
    edge.assert_healthy()


async def test_garbage_on_the_data_channel_is_skipped_and_the_call_goes_on(
    edge: ServeProcess, session: aiohttp.ClientSession
) -> None:
    client = Client(events=True)
    try:
        body = json.dumps({"agent_id": "demo", "offer": await client.offer()}).encode()
        status, answer = await post_offer(edge, session, body)
        assert status == 200, answer
        await client.pc.setRemoteDescription(
            RTCSessionDescription(**{k: answer[k] for k in ("sdp", "type")})
        )
        await wait_for(lambda: client.events.readyState == "open", within=10)
        before = bad_input(edge, "webrtc-datachannel")
        garbage: list[str | bytes] = [
            b"\x00\xff" * 100,
            b"x" * 60_000,
            "not json",
            "x" * (MAX_MESSAGE_BYTES * 8),
            "[1, 2]",
            "null",
            '{"type": "launch"}',
            '{"type": ["end"]}',
            '{"type": "dtmf", "digit": "55"}',
            '{"type": "dtmf", "digit": null}',
            json.dumps({"type": "end", "pad": "x" * MAX_MESSAGE_BYTES}),
        ]
        for message in garbage:
            client.events.send(message)
        await wait_for(
            lambda: bad_input(edge, "webrtc-datachannel") == before + len(garbage), within=10
        )
        call_id = answer["call_id"]
        assert await call_state(edge, session, call_id) == "active"
        assert f'"call_id": "{call_id}"' in edge.log
        client.events.send(json.dumps({"type": "end"}))
        await ended(edge, session, call_id)
    finally:
        await client.close()
    edge.assert_healthy()


# -- POST /register_sip_call and raw UDP to the SIP port ----------------------------------


async def register_sip(
    edge: ServeProcess, session: aiohttp.ClientSession, body: bytes
) -> tuple[int, dict[str, Any]]:
    headers = {**AUTH, "Content-Type": "application/json"}
    url = edge.base_url + "/register_sip_call"
    async with session.post(url, data=body, headers=headers) as resp:
        return resp.status, await resp.json()


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"[]", 400),
        (b"", 400),
        (b"\xff\xfe", 400),
        (b'{"agent_id": 5}', 400),
        (b'{"agent_id": "  "}', 400),
        (b'{"agent_id": "nobody"}', 404),
        (b'{"agent_id": "\\ud800"}', 400),  # a lone surrogate: not text
        (b'{"agent_id": "demo", "metadata": {"name": "\\udfff"}}', 400),
        (b'{"agent_id": "demo", "agent_config": {"\\ud800": 1}}', 400),
        (b'{"agent_config": {"prompt": "x"}}', 400),  # no sip.default_agent_id
        (b'{"agent_id": "demo", "agent_config": "x"}', 400),
        (b'{"agent_id": "demo", "metadata": [1]}', 400),
        (b'{"agent_id": "demo", "include_metadata_in_prompt": "yes"}', 400),
    ],
)
async def test_garbage_sip_registrations_are_4xx(
    edge: ServeProcess, session: aiohttp.ClientSession, body: bytes, status: int
) -> None:
    got, answer = await register_sip(edge, session, body)
    assert got == status, answer
    assert "error" in answer
    edge.assert_healthy()


async def sip_answer(sock: Socket, data: bytes, call_id: str, within: float = 1.0) -> int | None:
    """Send ``data`` to the edge's SIP port; the final status it answers for ``call_id``.

    None if there was none within ``within`` s: the packet was dropped. Answers to
    other Call-IDs (an earlier final response retransmitted) are skipped.
    """
    sock.send(data, ("127.0.0.1", SIP_PORT))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while (left := deadline - loop.time()) > 0:
        try:
            reply, _, _ = await asyncio.wait_for(sock.queue.get(), left)
        except TimeoutError:
            break
        message = parse_message(reply)
        assert isinstance(message, Response)
        if message.call_id() == call_id and message.status >= 200:
            return message.status
    return None


def invite(user: str, tag: str, body: str = "", extra: str = "") -> tuple[bytes, str]:
    """An INVITE for ``user`` (its own Call-ID, made of ``tag``) and that Call-ID."""
    call_id = f"hostile-{tag}@127.0.0.1"
    uri = f"sip:{user}@127.0.0.1:{SIP_PORT}"
    branch = f"z9hG4bK{tag}"
    return wire.request(
        "INVITE", uri=uri, body=body, extra=extra, branch=branch, call_id=call_id
    ), call_id


async def options_answered(sock: Socket) -> None:
    tag = str(time.time_ns())
    options = wire.request("OPTIONS", branch=f"z9hG4bK{tag}", call_id=f"options-{tag}")
    assert await sip_answer(sock, options, f"options-{tag}") == 200


DIGEST_GARBAGE = [
    'Digest username="pbx", realm="x", nonce="1.AAAA", uri="sip:x", response="zz"',
    'Digest username="pbx", nonce="' + "9" * 5000 + '.A", response="0"',
    "Digest " + "x" * 1500,
    'Digest username="' + "\u00e9" * 300 + '"',
    'Digest ,,,,==="""',
    "Digest",
    "Basic cGJ4OnRydW5rLXBhc3N3b3Jk",
]


async def test_sip_garbage_is_4xx_or_dropped_and_options_still_200(
    edge: ServeProcess, session: aiohttp.ClientSession
) -> None:
    sock = await open_socket()
    try:
        await options_answered(sock)
        pair = b'{"agent_id": "demo", "metadata": {"name": "\\ud83d\\ude00"}}'  # a valid pair
        status, registered = await register_sip(edge, session, pair)
        assert status == 200, registered
        user = registered["call_id"]
        full, full_id = invite(user, "trunc", wire.SIPP_SDP)
        cases: list[tuple[tuple[bytes, str], set[int | None]]] = [
            ((full[:-60], full_id), {400, None}),  # Content-Length past the datagram's end
            # not even a whole header section: 400 when what came has Via, From, To, CSeq …
            ((full[: len(full) // 2], full_id), {400, None}),
            (invite(user, "sdp1", "v=0\r\nm=audio x\r\n\x00"), {400}),
            (invite(user, "sdp2", "garbage"), {400}),
            (
                invite(user, "sdp3", "v=0\r\nc=IN IP4 999.1.1.1\r\nm=audio 70000 RTP/AVP 0\r\n"),
                {400},
            ),
            # a name, not an address: every RTP packet would resolve it on the event loop
            *(
                (invite(user, f"c{i}", wire.SIPP_SDP.replace("c=IN IP4 127.0.0.1", c)), {400})
                for i, c in enumerate(["c=IN IP4 rtp.hostile.invalid", "c=IN IP4 999.1.1.1"])
            ),
            (invite(SIP_NUMBER, "d0", wire.SIPP_SDP), {401}),
            *(
                (invite(SIP_NUMBER, f"d{i}", wire.SIPP_SDP, f"Authorization: {auth}"), {401, 400})
                for i, auth in enumerate(DIGEST_GARBAGE, start=1)
            ),
            (invite(SIP_NUMBER, "big", extra="X-Huge: " + "h" * 60_000), {400, 413, 513, None}),
            (
                invite(SIP_NUMBER, "many", extra="\r\n".join(f"X-H{i}: v" for i in range(3000))),
                {400, 413, 513, None},
            ),
            ((b"\x00\xff" * 700, ""), {None}),
            ((b"\r\n\r\n", ""), {None}),
            ((b"INVITE \xff\xfe SIP/2.0\r\n\r\n", ""), {None}),
        ]
        for (data, call_id), expected in cases:
            assert await sip_answer(sock, data, call_id) in expected, data[:300]
        await options_answered(sock)
    finally:
        sock.close()
    edge.assert_healthy()


async def test_garbage_inside_a_sip_call_is_refused_and_the_call_goes_on(
    edge: ServeProcess, session: aiohttp.ClientSession
) -> None:
    """In the dialog and on its RTP port: 4xx or dropped, the call still active, BYE ends it."""
    status, registered = await register_sip(edge, session, b'{"agent_id": "demo"}')
    assert status == 200, registered
    call_id = registered["call_id"]
    rtp = await open_socket()
    caller = Caller(("127.0.0.1", SIP_PORT), call_id, await open_socket())
    try:
        caller.send(caller.request("INVITE", sdp(rtp.port)))
        ok = await caller.response("INVITE")
        assert ok.status == 200
        caller.send(caller.request("ACK", cseq=caller.cseq))
        await wait_for(lambda: len(rtp.log) > 0, within=10)  # the greeting's RTP
        edge_rtp = ("127.0.0.1", media_port(ok.body))
        for junk in (b"", b"\x00", b"\xff" * 12, b"\x80" + b"\x00" * 11, b"\x80\x00" * 800):
            rtp.send(junk, edge_rtp)
            rtp.send(junk, (edge_rtp[0], edge_rtp[1] + 1))  # its RTCP port
        in_dialog = [
            ("INVITE", "v=0\r\nm=audio x\r\n", (), {400}),  # a broken re-offer
            ("INVITE", sdp(rtp.port).replace("PCMU", "OPUS"), (), {488}),
            (
                "INFO",
                "Signal=99999\r\nDuration=-1\r\n",
                ("Content-Type: application/dtmf-relay",),
                {200, 400, 415},
            ),
            ("INFO", "\x00\xff", ("Content-Type: application/dtmf",), {200, 400, 415}),
            ("UPDATE", "garbage", ("Content-Type: application/sdp",), {400, 488}),
            (
                "NOTIFY",
                "SIP/2.0 200 OK",
                ("Event: refer", "Content-Type: message/sipfrag"),
                {200, 481},
            ),
            ("PRACK", "", ("RAck: x y z",), {400, 481}),
        ]
        for method, body, extra, expected in in_dialog:
            caller.send(caller.request(method, body, extra=extra))
            answer = await caller.response(method)
            assert answer.status in expected, (method, answer.status)
            if method == "INVITE":
                caller.send(caller.request("ACK", cseq=caller.cseq))
        assert await call_state(edge, session, call_id) == "active"
        caller.send(caller.request("BYE"))
        assert (await caller.response("BYE")).status == 200
        await ended(edge, session, call_id)
    finally:
        rtp.close()
        caller.sip.close()
    edge.assert_healthy()


# -- voicemail and recording in a call's agent_config --------------------------------------

BAD_AGENT_CONFIGS = [
    ({"voicemail": "yes"}, "agent_config.voicemail"),
    ({"voicemail": [True]}, "agent_config.voicemail"),
    ({"voicemail": {"detect": "maybe"}}, "agent_config.voicemail"),
    ({"voicemail": {"detect": True, "action": "explode"}}, "agent_config.voicemail"),
    ({"voicemail": {"detect": True, "message": "m" * 5000}}, "agent_config.voicemail"),
    ({"voicemail": {"detect": True, "detector": {"nope": 1}}}, "agent_config.voicemail"),
    ({"voicemail": {"detect": True, "detector": "fast"}}, "agent_config.voicemail"),
    ({"voicemail": {"detect": True, "surprise": 1}}, "agent_config.voicemail"),
    ({"recording": "on"}, "agent_config.recording"),
    ({"recording": [1]}, "agent_config.recording"),
    ({"recording": {"enabled": "sometimes"}}, "agent_config.recording"),
    ({"recording": {"enabled": True, "format": "exe"}}, "agent_config.recording"),
    ({"recording": {"enabled": True, "channels": 7}}, "agent_config.recording"),
    ({"recording": {"enabled": True, "path": "/etc/passwd"}}, "agent_config.recording"),
]


@pytest.mark.parametrize(("agent_config", "reason"), BAD_AGENT_CONFIGS)
async def test_bad_voicemail_or_recording_is_400_with_the_reason(
    edge: ServeProcess, session: aiohttp.ClientSession, agent_config: dict[str, Any], reason: str
) -> None:
    outbound = {
        "from_phone": OUTBOUND_NUMBER,
        "to_phone": "+15555550142",
        "agent_id": "demo",
        "agent_config": agent_config,
    }
    for path, body in (
        ("/start_outbound_call", outbound),
        ("/register_sip_call", {"agent_id": "demo", "agent_config": agent_config}),
    ):
        async with session.post(edge.base_url + path, json=body, headers=AUTH) as resp:
            assert resp.status == 400, await resp.text()
            assert reason in (await resp.json())["error"]
    edge.assert_healthy()
