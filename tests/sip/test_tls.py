"""SIP over TLS (sip/tls.py) on real sockets and uvloop: framed SIP both ways, a renewed
certificate served from the next connection, handshakes that fail counted as bad input,
and the edge's own connections verified against a CA and a name."""

from __future__ import annotations

import asyncio
import logging
import ssl
from pathlib import Path

import pytest
from cryptography import x509

from telephony_edge import metrics
from telephony_edge.sip import tcp_policy
from telephony_edge.sip.tls import Certificate, TlsConfig, TlsSide, client_context
from tests.conftest import wait_for
from tests.sip.certs import Authority

OPTIONS = (
    b"OPTIONS sip:edge@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:5999;branch=z9hG4bK1\r\n"
    b"From: <sip:a@127.0.0.1>;tag=1\r\nTo: <sip:edge@127.0.0.1>\r\nCall-ID: tls-1\r\n"
    b"CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
)


class Listener:
    """A TlsSide on a free port, with what it delivered."""

    def __init__(self, folder: Path, timeout: float = 5.0) -> None:
        self.authority = Authority(folder)
        self.issued = self.authority.issue()
        self.received: list[tuple[bytes, tuple[str, int]]] = []
        certificate = Certificate(str(self.issued.certificate), str(self.issued.private_key))
        config = TlsConfig(certificate, client_context(str(self.authority.ca_file)), timeout)
        policy = tcp_policy.Limits(first_message_timeout=30, read_timeout=5)
        self.side = TlsSide(
            lambda data, peer: self.received.append((data, peer)), config, policy=policy
        )

    def client(self) -> ssl.SSLContext:
        return client_context(str(self.authority.ca_file))


@pytest.fixture
async def listener(tmp_path: Path) -> Listener:
    made = Listener(tmp_path)
    await made.side.start("127.0.0.1", 0)
    yield made  # type: ignore[misc]
    await made.side.stop()


async def open_tls(listener: Listener) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(
        "127.0.0.1", listener.side.port, ssl=listener.client(), server_hostname="127.0.0.1"
    )


def serial(writer: asyncio.StreamWriter) -> int:
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    return x509.load_der_x509_certificate(der).serial_number


async def test_sip_both_ways_on_the_connection(listener: Listener) -> None:
    reader, writer = await open_tls(listener)
    try:
        writer.write(OPTIONS)
        await wait_for(lambda: listener.received)
        [(data, peer)] = listener.received
        assert data == OPTIONS
        listener.side.send(peer, b"SIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n")
        assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5) == (
            b"SIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n"
        )
    finally:
        writer.close()


async def test_a_renewed_certificate_is_served_from_the_next_connection(
    listener: Listener, caplog: pytest.LogCaptureFixture
) -> None:
    _, first = await open_tls(listener)
    assert serial(first) == listener.issued.serial
    renewed = listener.authority.issue()  # the same files, rewritten
    assert renewed.serial != listener.issued.serial
    _, second = await open_tls(listener)
    assert serial(second) == renewed.serial
    first.write(OPTIONS)  # the connection that was up goes on with its session
    await wait_for(lambda: len(listener.received) == 1)
    # a key that does not match its certificate (files half replaced): the last good one
    other = listener.authority.issue(stem="other")
    listener.issued.private_key.write_bytes(other.private_key.read_bytes())
    with caplog.at_level(logging.WARNING, "telephony_edge.sip.tls"):
        _, third = await open_tls(listener)
    assert serial(third) == renewed.serial
    assert "not reloaded" in caplog.text
    for writer in (first, second, third):
        writer.close()


async def test_a_failed_handshake_is_bad_input_and_closes(tmp_path: Path) -> None:
    made = Listener(tmp_path, timeout=0.5)
    await made.side.start("127.0.0.1", 0)
    counter = metrics.BAD_INPUT.labels(source="sip-tls")
    closed = metrics.SIP_TCP_CLOSED.labels(reason="handshake")
    before, closed_before = counter._value.get(), closed._value.get()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", made.side.port)
        writer.write(OPTIONS)  # plain SIP to the TLS port
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the edge
        silent_reader, silent = await asyncio.open_connection("127.0.0.1", made.side.port)
        assert await asyncio.wait_for(silent_reader.read(), 5) == b""  # the handshake timed out
        await wait_for(lambda: made.side.handshakes_failed == 2)
        assert counter._value.get() == before + 2 and closed._value.get() == closed_before + 2
        assert not made.received and not made.side.connections
        writer.close()
        silent.close()
    finally:
        await made.side.stop()


async def test_our_connections_verify_the_server(listener: Listener, tmp_path: Path) -> None:
    stream = await listener.side.connect(("127.0.0.1", listener.side.port), "localhost")
    stream.write(OPTIONS)
    await wait_for(lambda: len(listener.received) == 1)
    stream.close()
    with pytest.raises(ssl.SSLCertVerificationError):  # the name is not in the certificate
        await listener.side.connect(("127.0.0.1", listener.side.port), "sip.example.com")
    (tmp_path / "other").mkdir()
    stranger = Listener(tmp_path / "other")
    with pytest.raises(ssl.SSLCertVerificationError):  # another CA's certificate
        await stranger.side.connect(("127.0.0.1", listener.side.port), "127.0.0.1")
    system = TlsSide(
        lambda data, peer: None, TlsConfig(None, client_context(), 5.0)
    )  # the system's trust store knows no test CA
    with pytest.raises(ssl.SSLCertVerificationError):
        await system.connect(("127.0.0.1", listener.side.port))
