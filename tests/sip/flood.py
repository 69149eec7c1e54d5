"""A SIP flood from one source address, as a process of its own (tests and bench/sip_flood.py).

    python -m tests.sip.flood HOST:PORT [--method OPTIONS] [--rate 1000] [--seconds 5]
                              [--source 127.0.0.1] [--count N]

Sends ``--method`` requests (each a new transaction: its own branch, Call-ID and
From tag) at ``--rate`` per second (0: as fast as it can) from ``--source`` for
``--seconds`` (or ``--count`` of them), counts what comes back, and prints one
JSON line: ``{"sent": …, "answered": …, "by_status": {…}}``. A process of its
own so that the edge's event loop, not the flood's, is what is measured.
"""

from __future__ import annotations

import argparse
import json
import secrets
import socket
import time
from collections import Counter


def request(method: str, target: tuple[str, int], source: tuple[str, int], n: int) -> bytes:
    """A well-formed out-of-dialog request, new transaction ``n``."""
    host, port = target
    tag = secrets.token_hex(4)
    lines = [
        f"{method} sip:flood{n}@{host}:{port} SIP/2.0",
        f"Via: SIP/2.0/UDP {source[0]}:{source[1]};branch=z9hG4bKfl{tag}{n};rport",
        "Max-Forwards: 70",
        f"From: <sip:flood@{source[0]}>;tag={tag}",
        f"To: <sip:flood{n}@{host}>",
        f"Call-ID: flood-{tag}-{n}@{source[0]}",
        f"CSeq: 1 {method}",
        f"Contact: <sip:flood@{source[0]}:{source[1]}>",
        "Content-Length: 0",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def flood(
    target: tuple[str, int],
    method: str,
    rate: float,
    seconds: float,
    source: str,
    count: int | None = None,
    linger: float = 1.0,
) -> dict[str, object]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((source, 0))
    sock.setblocking(False)
    local = sock.getsockname()
    statuses: Counter[str] = Counter()
    sent = 0
    start = time.monotonic()
    total = count if count is not None else int(rate * seconds)
    interval = 1.0 / rate if rate > 0 else 0.0

    def drain() -> None:
        while True:
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                return
            if data.startswith(b"SIP/2.0 "):
                statuses[data[8:11].decode()] += 1

    while sent < total:
        due = start + sent * interval
        wait = due - time.monotonic()
        if wait > 0:
            time.sleep(min(wait, 0.01))
            drain()
            continue
        try:
            sock.sendto(request(method, target, local, sent), target)
        except BlockingIOError:
            time.sleep(0.001)
            continue
        sent += 1
        if sent % 50 == 0:
            drain()
    end = time.monotonic() + linger
    while time.monotonic() < end:
        drain()
        time.sleep(0.01)
    sock.close()
    return {
        "sent": sent,
        "answered": sum(statuses.values()),
        "by_status": dict(statuses),
        "seconds": round(time.monotonic() - start - linger, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("target")
    parser.add_argument("--method", default="OPTIONS")
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--source", default="127.0.0.1")
    parser.add_argument("--count", type=int, default=None)
    args = parser.parse_args()
    host, _, port = args.target.rpartition(":")
    result = flood((host, int(port)), args.method, args.rate, args.seconds, args.source, args.count)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
