"""Who may call, on the wire: raw UDP (and sipp's own digest) against the running edge.

The edge has three SIP numbers: ``…200`` from trunk ``pbx`` (127.0.0.1, no
credentials), ``…201`` from trunk ``carrier`` (127.0.0.0/8, digest), ``…202``
from trunk ``far`` (192.0.2.0/24, not us).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from telephony_edge.sip.auth import parse_auth_params
from telephony_edge.sip.message import Response
from telephony_edge.sip.provider import SIP_ENDPOINT
from tests.conftest import Edge, Receiver, wait_for
from tests.sip.conftest import finished, sip_test_settings, sipp, sipp_binary
from tests.sip.test_udp_edge import Caller, open_socket, sdp

NUMBERS = {
    n: {"provider": "sip", "agent_id": "echo", "region": "local"}
    for n in ("+15555550200", "+15555550201", "+15555550202")
}
TRUNKS = {
    "pbx": {"cidrs": ["127.0.0.1/32"], "numbers": ["+15555550200"]},
    "carrier": {
        "cidrs": ["127.0.0.0/8"],
        "numbers": ["+15555550201"],
        "username": "edge",
        "password": "s3cret",
        "realm": "edge.test",
    },
    "far": {"cidrs": ["192.0.2.0/24"], "numbers": ["+15555550202"]},
}


async def trunk_edge(make_edge: Callable[..., Any], receiver: Receiver, **sip: Any) -> Edge:
    sipp_binary()
    settings = sip_test_settings(
        receiver,
        {"trunks": TRUNKS, **sip},
        regions={"local": {"public_url": "http://127.0.0.1:8080"}},
        numbers=NUMBERS,
    )
    edge: Edge = await make_edge(settings)
    return edge


async def caller_for(edge: Edge, user: str) -> Caller:
    return Caller(("127.0.0.1", edge.app[SIP_ENDPOINT].port), user, await open_socket())


def authorization(challenge: str, user: str, password: str, uri: str) -> str:
    """RFC 8760 SHA-256 digest with qop=auth, computed here from the RFC's formulas."""
    p = parse_auth_params(challenge)[1]

    def h(text: str) -> str:
        return hashlib.sha256(text.encode()).hexdigest()

    ha1, ha2 = h(f"{user}:{p['realm']}:{password}"), h(f"INVITE:{uri}")
    response = h(f"{ha1}:{p['nonce']}:00000001:abcdef:auth:{ha2}")
    return (
        f'Authorization: Digest username="{user}", realm="{p["realm"]}", nonce="{p["nonce"]}", '
        f'uri="{uri}", response="{response}", algorithm=SHA-256, qop=auth, nc=00000001, '
        'cnonce="abcdef"'
    )


async def hang_up(caller: Caller) -> None:
    caller.send(caller.request("ACK", cseq=caller.cseq))
    caller.send(caller.request("BYE"))
    assert (await caller.response("BYE")).status == 200
    caller.sip.close()


async def test_trunk_number_call_with_x_headers_in_the_metadata(
    make_edge: Callable[..., Any], receiver: Receiver
) -> None:
    edge = await trunk_edge(make_edge, receiver)
    caller = await caller_for(edge, "+15555550200")
    rtp = await open_socket()
    sid = "X-Twilio-CallSid: CA0123456789abcdef0123456789abcdef"
    caller.send(caller.request("INVITE", sdp(rtp.port), extra=(sid, "X-Secret: not-copied")))
    ok = await caller.response("INVITE")
    assert ok.status == 200
    await hang_up(caller)
    await wait_for(lambda: receiver.received, within=10)
    [payload] = receiver.received
    assert payload["call_status"] == "user-ended"
    assert payload["metadata"] == {"X-Twilio-CallSid": "CA0123456789abcdef0123456789abcdef"}
    assert payload["voip"]["to"] == "+15555550200" and payload["voip"]["from"] == "caller"
    rtp.close()


async def test_digest_401_then_sha256_admits_and_a_bad_password_is_403(
    make_edge: Callable[..., Any], receiver: Receiver
) -> None:
    edge = await trunk_edge(make_edge, receiver)
    caller = await caller_for(edge, "+15555550201")
    rtp = await open_socket()
    caller.send(caller.request("INVITE", sdp(rtp.port)))
    challenge = await caller.response("INVITE")
    assert challenge.status == 401
    offers = challenge.headers.get_all("WWW-Authenticate")
    assert "algorithm=SHA-256" in offers[0] and "algorithm=MD5" in offers[1]
    caller.send(caller.request("ACK", cseq=caller.cseq))
    caller.to_tag = ""  # the next INVITEs start the dialog afresh
    uri = f"sip:+15555550201@127.0.0.1:{caller.edge[1]}"
    bad = authorization(offers[0], "edge", "guess", uri)
    caller.send(caller.request("INVITE", sdp(rtp.port), extra=(bad,)))
    assert (await caller.response("INVITE")).status == 403
    caller.send(caller.request("ACK", cseq=caller.cseq))
    caller.to_tag = ""
    good = authorization(offers[0], "edge", "s3cret", uri)
    caller.send(caller.request("INVITE", sdp(rtp.port), extra=(good,)))
    assert (await caller.response("INVITE")).status == 200
    await hang_up(caller)
    await wait_for(lambda: receiver.received, within=10)
    assert receiver.received[0]["voip"]["to"] == "+15555550201"
    ua = edge.app[SIP_ENDPOINT].ua
    assert ua is not None and ua.stats.challenged_401 == 1 and ua.stats.refused_403 == 1
    rtp.close()


async def test_sipp_md5_digest_answers_the_challenge(
    make_edge: Callable[..., Any], receiver: Receiver, tmp_path: Path
) -> None:
    trunks = {**TRUNKS, "carrier": {**TRUNKS["carrier"], "algorithms": ["MD5"]}}
    edge = await trunk_edge(make_edge, receiver, trunks=trunks)
    port = edge.app[SIP_ENDPOINT].port
    # sipp's digest-uri defaults to the edge's address; the edge wants the Request-URI
    auth = ("-au", "edge", "-ap", "s3cret", "-auth_uri", f"+15555550201@127.0.0.1:{port}")
    process = await sipp(edge, "uac_digest.xml", "+15555550201", tmp_path, *auth)
    await finished(process, tmp_path)  # 401, ACK, INVITE with Authorization, 200, ACK, BYE
    await wait_for(lambda: receiver.received, within=10)
    assert receiver.received[0]["call_status"] == "user-ended"


async def answer_to(caller: Caller, within: float = 1.0) -> Response | None:
    try:
        return await caller.response("INVITE", within=within)
    except TimeoutError:
        return None


@pytest.mark.parametrize("user", ["+15555550202", "+19999999999", "admin"])
async def test_wrong_source_or_unknown_number_is_403(
    make_edge: Callable[..., Any], receiver: Receiver, user: str
) -> None:
    edge = await trunk_edge(make_edge, receiver)
    caller = await caller_for(edge, user)
    caller.send(caller.request("INVITE", sdp(40000)))
    answer = await answer_to(caller, 3.0)
    assert answer is not None and answer.status == 403
    caller.sip.close()


async def test_drop_mode_answers_nothing_and_a_source_of_refusals_is_cut_off(
    make_edge: Callable[..., Any], receiver: Receiver
) -> None:
    # no trunk holds 127.0.0.1 here, so the test is a stranger to the edge
    edge = await trunk_edge(
        make_edge,
        receiver,
        trunks={"far": TRUNKS["far"]},
        drop_unknown=True,
        rate_per_minute=1,
        rate_burst=3,
    )
    unknown = await caller_for(edge, "+15555550202")
    unknown.send(unknown.request("INVITE", sdp(40000)))
    assert await answer_to(unknown) is None  # dropped: nothing comes back
    # two more refusals allowed: unknown call ids get their 404, the third empties the
    # bucket and cuts the source off
    answers = []
    for n in range(4):
        caller = await caller_for(edge, f"call_unknown{n}")
        caller.send(caller.request("INVITE", sdp(40000)))
        answer = await answer_to(caller)
        answers.append(None if answer is None else answer.status)
        caller.sip.close()
    assert answers == [404, 404, 404, None]
    ua = edge.app[SIP_ENDPOINT].ua
    assert ua is not None and ua.stats.dropped_unadmitted == 2
    unknown.sip.close()
    await asyncio.sleep(0)
