"""SRTP offers and SIP over TLS against the running edge (``make_edge``, real sockets):
an ``RTP/SAVP`` offer over UDP is 488 and counted unless ``sip.srtp_over_plain``; over TLS
a malformed ``a=crypto`` is 488 and counted, a ``sips:`` call gets a ``sips:`` Contact,
and a renewed certificate is served from the next connection."""

from __future__ import annotations

import asyncio
import base64
import secrets
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from cryptography import x509

from telephony_edge import metrics
from telephony_edge.sip.message import Request, Response
from telephony_edge.sip.parse import parse_message
from telephony_edge.sip.provider import SIP_ENDPOINT
from telephony_edge.sip.tcp import StreamFramer
from tests.conftest import Edge, Receiver
from tests.sip.certs import Authority
from tests.sip.conftest import API_KEY, register, sip_test_settings
from tests.sip.test_udp_edge import Caller, open_socket

KEY = base64.b64encode(bytes(range(30))).decode()


def savp(port: int = 40000, crypto: str = f"1 AES_CM_128_HMAC_SHA1_80 inline:{KEY}") -> str:
    return (
        "v=0\r\no=caller 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
        f"m=audio {port} RTP/SAVP 0\r\na=rtpmap:0 PCMU/8000\r\na=crypto:{crypto}\r\n"
    )


def bad_input(source: str) -> float:
    return float(metrics.BAD_INPUT.labels(source=source)._value.get())


async def test_savp_over_udp_is_488_unless_configured(
    make_edge: Callable[..., Any], receiver: Receiver
) -> None:
    for over_plain in (False, True):
        edge: Edge = await make_edge(sip_test_settings(receiver, {"srtp_over_plain": over_plain}))
        reg = await register(edge)
        endpoint = edge.app[SIP_ENDPOINT]
        caller = Caller(("127.0.0.1", endpoint.port), reg["call_id"], await open_socket())
        before = bad_input("sip-udp")
        caller.send(caller.request("INVITE", savp()))
        answer = await caller.response("INVITE")
        if over_plain:
            assert (
                answer.status == 200
                and b"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:" in answer.body
            )
            assert b"m=audio" in answer.body and b"RTP/SAVP" in answer.body
            caller.send(caller.request("ACK", cseq=caller.cseq))
            caller.send(caller.request("BYE"))
            assert (await caller.response("BYE")).status == 200
        else:
            assert answer.status == 488
            caller.send(caller.request("ACK", cseq=caller.cseq))
            assert bad_input("sip-udp") == before + 1
        caller.sip.close()


class TlsCaller:
    """A SIP caller over TLS, written out by hand on an ``ssl`` stream."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.framer = StreamFramer()
        self.pending: list[bytes] = []

    @classmethod
    async def open(cls, port: int, ca_file: Path) -> TlsCaller:
        context = ssl.create_default_context(cafile=str(ca_file))
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=context, server_hostname="127.0.0.1"
        )
        return cls(reader, writer)

    def serial(self) -> int:
        der = self.writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        return x509.load_der_x509_certificate(der).serial_number

    def request(
        self, method: str, uri: str, call_id: str, body: str = "", to_tag: str = ""
    ) -> None:
        port = self.writer.get_extra_info("sockname")[1]
        to = f"<{uri}>" + (f";tag={to_tag}" if to_tag else "")
        lines = [
            f"{method} {uri} SIP/2.0",
            f"Via: SIP/2.0/TLS 127.0.0.1:{port};branch=z9hG4bK{secrets.token_hex(6)};rport",
            "Max-Forwards: 70",
            "From: <sip:caller@127.0.0.1>;tag=tls1",
            f"To: {to}",
            f"Call-ID: {call_id}",
            f"CSeq: 1 {method}",
            f"Contact: <sip:caller@127.0.0.1:{port};transport=tls>",
        ]
        if body:
            lines.append("Content-Type: application/sdp")
        raw = body.encode()
        head = "\r\n".join(lines) + f"\r\nContent-Length: {len(raw)}\r\n\r\n"
        self.writer.write(head.encode() + raw)

    def invite(self, uri: str, body: str, call_id: str) -> None:
        self.request("INVITE", uri, call_id, body)

    async def message(self) -> Request | Response:
        while not self.pending:
            self.pending += self.framer.feed(await asyncio.wait_for(self.reader.read(4096), 10))
        return parse_message(self.pending.pop(0))

    async def final(self) -> Response:
        while True:
            msg = await self.message()
            if isinstance(msg, Response) and msg.status >= 200:
                return msg

    def close(self) -> None:
        self.writer.close()


async def test_over_tls(make_edge: Callable[..., Any], receiver: Receiver, tmp_path: Path) -> None:
    authority = Authority(tmp_path)
    issued = authority.issue()
    tls = {
        "tls": True,
        "tls_port": 0,
        "tls_certificate": str(issued.certificate),
        "tls_private_key": str(issued.private_key),
    }
    edge: Edge = await make_edge(sip_test_settings(receiver, tls))
    port = edge.app[SIP_ENDPOINT].tls_port
    caller = await TlsCaller.open(port, authority.ca_file)
    assert caller.serial() == issued.serial

    reg = await register(edge)
    before = bad_input("sip-tls")
    uri = f"sip:{reg['call_id']}@127.0.0.1:{port}"
    caller.invite(uri, savp(crypto="1 AES_CM_128_HMAC_SHA1_80 inline:dG9vIHNob3J0"), "tls-bad")
    assert (await caller.final()).status == 488
    assert bad_input("sip-tls") == before + 1

    caller.invite(f"sips:{reg['call_id']}@127.0.0.1:{port}", savp(), "tls-good")
    ok = await caller.final()
    assert ok.status == 200, ok.status
    assert ok.headers.get("Contact") == f"<sips:127.0.0.1:{port}>"
    assert b"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:" in ok.body
    caller.request("ACK", f"sips:{reg['call_id']}@127.0.0.1:{port}", "tls-good", to_tag=ok.to().tag)
    # the edge's hang-up: its BYE comes on the dialog's connection, Via TLS and the TLS port
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{str(edge.url('/'))[:-1]}/calls/{reg['call_id']}/hangup",
            headers={"Authorization": f"Bearer {API_KEY}"},
        ) as resp,
    ):
        assert resp.status == 200, await resp.text()
    bye = await caller.message()
    assert isinstance(bye, Request) and bye.method == "BYE"
    assert (
        bye.uri
        == f"sip:caller@127.0.0.1:{caller.writer.get_extra_info('sockname')[1]};transport=tls"
    )
    assert bye.top_via().transport == "TLS" and bye.top_via().port == port

    renewed = authority.issue()  # the files replaced while the edge runs
    second = await TlsCaller.open(port, authority.ca_file)
    assert second.serial() == renewed.serial != issued.serial
    second.close()
    caller.close()
