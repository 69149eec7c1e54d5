"""A packet capture on loopback (tcpdump), and the RTP it holds: what a wiretap would see."""

from __future__ import annotations

import asyncio
import signal
import struct
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import require_binary

ETHERNET = 1  # tcpdump's link type on Linux loopback
RUN = 32  # this many equal bytes in a row: no cipher output does that


@dataclass(frozen=True)
class Datagram:
    source: tuple[str, int]
    dest: tuple[str, int]
    payload: bytes
    at: float = 0.0  # when it was captured (Unix time)


class Capture:
    """``tcpdump -i lo`` of UDP on the ports ``low``-``high`` (and port ``also``) while the
    block runs."""

    def __init__(self, path: Path, low: int, high: int, also: int | None = None) -> None:
        self.path = path
        ports = f"portrange {low}-{high}" + ("" if also is None else f" or port {also}")
        self.filter = f"udp and ({ports})"
        self._process: asyncio.subprocess.Process | None = None
        self._read: list[Datagram] = []  # what was parsed already, up to byte _offset
        self._offset = 24  # past the file header

    async def __aenter__(self) -> Capture:
        binary = require_binary("tcpdump", "apt-get install -y tcpdump")
        self._process = await asyncio.create_subprocess_exec(
            # packets written as they come (not in the kernel's batches): readable mid-call
            binary, "-i", "lo", "-U", "--immediate-mode", "-n", "-w", str(self.path), self.filter,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert self._process.stderr is not None
        line = await asyncio.wait_for(self._process.stderr.readline(), 10)
        assert b"listening on" in line, line  # the capture runs before the call starts
        return self

    async def __aexit__(self, *exc: object) -> None:
        process = self._process
        assert process is not None
        await asyncio.sleep(0.3)  # the last packets written (-U flushes each)
        process.send_signal(signal.SIGINT)
        await asyncio.wait_for(process.wait(), 10)

    def datagrams(self) -> list[Datagram]:
        """Every IPv4 UDP datagram captured (a pcap file: link type Ethernet); what is new
        since the last call is parsed (cheap to call often while the capture grows)."""
        data = self.path.read_bytes()
        magic, _, _, _, _, _, link = struct.unpack("<IHHiIII", data[:24])
        assert magic == 0xA1B2C3D4 and link == ETHERNET, (hex(magic), link)
        out, at = self._read, self._offset
        while at + 16 <= len(data):
            seconds, micros, length, _ = struct.unpack("<IIII", data[at : at + 16])
            if at + 16 + length > len(data):
                break  # a record still being written (read while the capture runs)
            frame = data[at + 16 : at + 16 + length]
            at += 16 + length
            self._offset = at
            if len(frame) < 42 or frame[12:14] != b"\x08\x00" or frame[23] != 17:
                continue
            ihl = (frame[14] & 0x0F) * 4
            ip, udp = frame[14:], frame[14 + ihl :]
            sport, dport, size = struct.unpack("!HHH", udp[:6])
            src, dst = ".".join(map(str, ip[12:16])), ".".join(map(str, ip[16:20]))
            payload = bytes(udp[8:size])
            out.append(Datagram((src, sport), (dst, dport), payload, seconds + micros / 1e6))
        return list(out)


def audio_packets(datagrams: list[Datagram]) -> list[bytes]:
    """The RTP packets of G.711 audio (version 2, payload type 0 or 8: clear in SRTP too)."""
    return [
        d.payload
        for d in datagrams
        if len(d.payload) > 12 and d.payload[0] >> 6 == 2 and d.payload[1] & 0x7F in (0, 8)
    ]


def plaintext(packet: bytes) -> bool:
    """A G.711 packet whose 20 ms of audio is readable: 160 bytes of payload and no tag,
    or a run of equal bytes (encoded silence) that encryption would have hidden."""
    payload = packet[12:]
    if len(payload) == 160:
        return True
    return any(payload[i : i + RUN] == payload[i : i + 1] * RUN for i in range(len(payload) - RUN))
