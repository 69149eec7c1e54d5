"""Digest on the wire (raw UDP against the running edge): a copied Authorization header opens
no call, and a source that guesses passwords is locked out while the trunk goes on calling."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from typing import Any

from telephony_edge import metrics
from telephony_edge.sip.provider import SIP_ENDPOINT
from tests.conftest import Edge, Receiver
from tests.sip.test_udp_admission import authorization, hang_up, trunk_edge
from tests.sip.test_udp_edge import Caller, Socket, open_socket, sdp

NUMBER = "+15555550201"  # trunk "carrier": 127.0.0.0/8 with digest (edge / s3cret)


async def caller_from(edge: Edge, source: str) -> Caller:
    loop = asyncio.get_running_loop()
    _, sock = await loop.create_datagram_endpoint(Socket, local_addr=(source, 0))
    return Caller(("127.0.0.1", edge.app[SIP_ENDPOINT].port), NUMBER, sock)


def digest_total(outcome: str) -> float:
    return metrics.SIP_DIGEST.labels(outcome=outcome)._value.get()


async def challenge(caller: Caller, rtp_port: int) -> str:
    """INVITE → 401 (ACKed): the SHA-256 challenge, bound to this source and Call-ID."""
    caller.send(caller.request("INVITE", sdp(rtp_port)))
    answer = await caller.response("INVITE")
    assert answer.status == 401
    caller.send(caller.request("ACK", cseq=caller.cseq))
    caller.to_tag = ""
    return answer.headers.get_all("WWW-Authenticate")[0]


async def attempt(caller: Caller, header: str, rtp_port: int) -> int:
    """An INVITE (a new transaction) carrying ``header``; its final status (ACKed unless 2xx)."""
    caller.send(caller.request("INVITE", sdp(rtp_port), extra=(header,)))
    answer = await caller.response("INVITE")
    if answer.status >= 300:
        caller.send(caller.request("ACK", cseq=caller.cseq))
        caller.to_tag = ""
    return answer.status


async def test_a_copied_authorization_header_opens_no_new_call(
    make_edge: Callable[..., Any], receiver: Receiver
) -> None:
    """Issue 19: a captured Authorization opened new calls for 300 s. Now it is refused
    for a new Call-ID (401: its nonce is bound to the call), for another source (401:
    bound to the address), and as a new INVITE of the same call (401 stale: nc used)."""
    edge = await trunk_edge(make_edge, receiver)
    rtp = await open_socket()
    trunk = await caller_from(edge, "127.0.0.1")
    offer = await challenge(trunk, rtp.port)
    uri = f"sip:{NUMBER}@127.0.0.1:{trunk.edge[1]}"
    header = authorization(offer, "edge", "s3cret", uri)[len("Authorization: ") :]
    assert await attempt(trunk, "Authorization: " + header, rtp.port) == 200
    await hang_up(trunk)
    replays = digest_total("replayed")

    new_call = await caller_from(edge, "127.0.0.1")  # same address, another Call-ID
    assert await attempt(new_call, "Authorization: " + header, rtp.port) == 401
    elsewhere = await caller_from(edge, "127.0.0.6")
    elsewhere.call_id, elsewhere.from_tag = trunk.call_id, secrets.token_hex(4)
    assert await attempt(elsewhere, "Authorization: " + header, rtp.port) == 401
    same_call = await caller_from(edge, "127.0.0.1")  # the captured call, a new INVITE
    same_call.call_id = trunk.call_id
    caller_stale = same_call.request("INVITE", sdp(rtp.port), extra=("Authorization: " + header,))
    same_call.send(caller_stale)
    answer = await same_call.response("INVITE")
    assert answer.status == 401
    assert "stale=true" in answer.headers.get_all("WWW-Authenticate")[0]
    assert digest_total("replayed") == replays + 1
    ua = edge.app[SIP_ENDPOINT].ua
    assert ua is not None and ua.stats.calls_started == 1
    for caller in (new_call, elsewhere, same_call):
        caller.sip.close()
    rtp.close()


async def test_a_hundred_wrong_passwords_lock_the_source_out_not_the_trunk(
    make_edge: Callable[..., Any], receiver: Receiver
) -> None:
    """Issue 19: guessing was unlimited. 100 wrong passwords from 127.0.0.7 (one nonce,
    a new INVITE each): 403 each, and then its right password is 403 too (locked out,
    unchecked); the trunk at 127.0.0.1 still gets its call."""
    edge = await trunk_edge(
        make_edge, receiver, digest_max_failures=100, digest_max_user_failures=1000
    )
    rtp = await open_socket()
    guesser = await caller_from(edge, "127.0.0.7")
    uri = f"sip:{NUMBER}@127.0.0.1:{guesser.edge[1]}"
    offer = await challenge(guesser, rtp.port)
    locked = digest_total("locked")
    statuses = [
        await attempt(guesser, authorization(offer, "edge", f"guess{n}", uri), rtp.port)
        for n in range(100)
    ]
    assert statuses == [403] * 100
    right = authorization(offer, "edge", "s3cret", uri)
    assert await attempt(guesser, right, rtp.port) == 403  # right, but locked out
    assert digest_total("locked") == locked + 1
    trunk = await caller_from(edge, "127.0.0.1")
    offer = await challenge(trunk, rtp.port)
    assert await attempt(trunk, authorization(offer, "edge", "s3cret", uri), rtp.port) == 200
    await hang_up(trunk)
    guesser.sip.close()
    rtp.close()
