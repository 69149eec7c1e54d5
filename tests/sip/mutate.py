"""Mutated and random SIP packets, shared by the property tests and bench/sip_fuzz.py."""

from __future__ import annotations

import random
from collections.abc import Callable

from tests.sip import wire

SDPS = [wire.TWILIO_SDP, wire.SIPP_SDP, wire.ASTERISK_SDP, ""]


def corpus() -> list[bytes]:
    """Valid packets of every kind the UA meets."""
    out = [wire.twilio_invite(), wire.asterisk_invite()]
    for i, sdp in enumerate(SDPS):
        out.append(wire.request("INVITE", branch=f"z9hG4bKm{i}", call_id=f"m{i}", body=sdp))
    for method in ("ACK", "BYE", "CANCEL", "OPTIONS", "INFO", "UPDATE", "NOTIFY", "FOO"):
        out.append(wire.request(method, to_tag="id1" if method != "CANCEL" else None))
    out.append(
        b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKid2\r\n"
        b"From: <sip:a@b>;tag=id1\r\nTo: <sip:c@d>;tag=x\r\nCall-ID: r\r\nCSeq: 2 BYE\r\n"
        b"Content-Length: 0\r\n\r\n"
    )
    return out


CORPUS = corpus()
JUNK = [b"\x00", b"\xff", b";", b":", b",", b"<", b">", b'"', b"\\", b" ", b"\t", b"\r\n",
        b"\r\n ", b"=", b"%", b"SIP/2.0", b"z9hG4bK", b"99999999999", b"-1", b"[", b"]", b"@",
        b"sip:", b"tag=", b"branch=", b"\r\n\r\n", b"Content-Length: 5\r\n",
        b"a" * 300]  # fmt: skip


def _lines(data: bytes) -> list[bytes]:
    return data.split(b"\r\n")


def flip(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        if b:
            b[rng.randrange(len(b))] = rng.randrange(256)
    return bytes(b)


def truncate(rng: random.Random, data: bytes) -> bytes:
    return data[: rng.randrange(len(data) + 1)]


def insert(rng: random.Random, data: bytes) -> bytes:
    at = rng.randrange(len(data) + 1)
    return data[:at] + rng.choice(JUNK) + data[at:]


def drop_line(rng: random.Random, data: bytes) -> bytes:
    lines = _lines(data)
    del lines[rng.randrange(len(lines))]
    return b"\r\n".join(lines)


def dup_line(rng: random.Random, data: bytes) -> bytes:
    lines = _lines(data)
    i = rng.randrange(len(lines))
    lines.insert(i, lines[i])
    return b"\r\n".join(lines)


def junk_value(rng: random.Random, data: bytes) -> bytes:
    lines = _lines(data)
    i = rng.randrange(len(lines))
    name = lines[i].split(b":", 1)[0]
    value = b"".join(rng.choice(JUNK) for _ in range(rng.randint(0, 5)))
    lines[i] = name + b": " + value
    return b"\r\n".join(lines)


def content_length(rng: random.Random, data: bytes) -> bytes:
    n = str(rng.choice([0, 1, 5, 100, 10**7, -3])).encode()
    lines = [
        (b"Content-Length: " + n) if ln.lower().startswith(b"content-length") else ln
        for ln in _lines(data)
    ]
    return b"\r\n".join(lines)


def version(rng: random.Random, data: bytes) -> bytes:
    return data.replace(b"SIP/2.0", rng.choice([b"SIP/3.0", b"SIP/2.1", b"SIP/", b"HTTP/1.1"]), 1)


def splice(rng: random.Random, data: bytes) -> bytes:
    other = rng.choice(CORPUS)
    return data[: rng.randrange(len(data) + 1)] + other[rng.randrange(len(other) + 1) :]


def random_bytes(rng: random.Random, data: bytes) -> bytes:
    return rng.randbytes(rng.randint(0, 1500))


def random_text(rng: random.Random, data: bytes) -> bytes:
    return b"".join(rng.choice(JUNK) for _ in range(rng.randint(0, 60)))


MUTATIONS: list[Callable[[random.Random, bytes], bytes]] = [
    flip, truncate, insert, drop_line, dup_line, junk_value, content_length, version, splice,
]  # fmt: skip


def packet(rng: random.Random) -> bytes:
    """One packet: mostly mutated real messages (1-3 mutations), some pure noise."""
    roll = rng.random()
    if roll < 0.1:
        return random_bytes(rng, b"")
    if roll < 0.15:
        return random_text(rng, b"")
    data = rng.choice(CORPUS)
    if roll < 0.2:
        return data
    for _ in range(rng.randint(1, 3)):
        data = rng.choice(MUTATIONS)(rng, data)
    return data
