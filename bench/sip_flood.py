"""Flood benchmark: 10k open SIP transactions, then a flood, against one ``serve`` process.

    python bench/sip_flood.py [--open 10000] [--rate 1000] [--seconds 10] [--method OPTIONS]
                              [--sources 1] [--tree DIR] [--json F]

The edge runs as ``bench/twilio_load.py --serve-edge`` (``serve`` with its
event-loop lag probe, ``TWILIO_LOAD_LAG``) on uvloop, pinned to one core where
there are two. Then, from loopback addresses of their own:

1. ``--open`` OPTIONS from 127.0.1.x (200 per source, under the per-source
   burst) leave that many server transactions open in Timer J (32 s);
2. ``--rate`` requests/s of ``--method`` for ``--seconds`` (``tests/sip/flood.py``
   processes), from one source (127.0.0.1: the per-source limit takes most of
   it) or spread over ``--sources`` addresses 127.0.2.x (each under the limit:
   every request reaches the UA, which is what the transaction index is for);
3. meanwhile, every 50 ms, an OPTIONS probe from 127.0.0.3 (its round trip is
   the edge's lag as a peer sees it), and a genuine INVITE to a registered
   call id from 127.0.0.2 one second in (time to its 100 and its 200).

Reported: the flood's sent/answered counts, the probe's round trip (p50, p99,
max, lost), the genuine call's 100/200 times, and the edge's event-loop lag
over the flood (how late a 5 ms sleep woke: p50, p99, max).

``--tcp-idle N`` first opens N idle TCP connections (32 per address from
127.0.4.x, the per-source limit), then places the genuine call over TCP from
127.0.0.2 instead: its 100/200 times, or ``refused`` when the edge closes it. ``--tree DIR``
runs the edge from another checkout (its own ``bench/twilio_load.py``), e.g. the commit before
the transaction index, for a before/after.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import twilio_load as tl  # bench/ helpers: config, spawning, pinning
import yaml

from tests.sip.flood import flood

PROBE_SOURCE, CALLER_SOURCE = "127.0.0.3", "127.0.0.2"
SDP = (
    "v=0\r\no=- 1 1 IN IP4 127.0.0.2\r\ns=-\r\nc=IN IP4 127.0.0.2\r\nt=0 0\r\n"
    "m=audio 40002 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
)


def config(path: Path, http_port: int, sip_port: int) -> None:
    tl.write_config(path, http_port, 0, use_uvloop=True)
    data = yaml.safe_load(path.read_text())
    del data["agent_core"]  # the embedded one: the genuine call needs no other process
    data["sip"] = {"enabled": True, "bind_host": "127.0.0.1", "port": sip_port}
    path.write_text(yaml.safe_dump(data))


def register(base: str) -> str:
    request = urllib.request.Request(
        base + "/register_sip_call",
        data=json.dumps({"agent_id": "echo"}).encode(),
        headers={"Authorization": f"Bearer {tl.API_KEY}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as resp:
        return str(json.loads(resp.read())["call_id"])


def message(
    method: str, user: str, edge: tuple[str, int], local: tuple[str, int], **kw: Any
) -> bytes:
    """A request of the genuine caller or the probe (``kw``: body, tag, call_id, to_tag, cseq)."""
    body = kw.get("body", "")
    tag, call_id = kw.get("tag", secrets.token_hex(4)), kw.get("call_id", secrets.token_hex(8))
    lines = [
        f"{method} sip:{user}@{edge[0]}:{edge[1]} SIP/2.0",
        f"Via: SIP/2.0/{kw.get('transport', 'UDP')} {local[0]}:{local[1]}"
        f";branch=z9hG4bK{secrets.token_hex(6)};rport",
        "Max-Forwards: 70",
        f"From: <sip:bench@{local[0]}>;tag={tag}",
        f"To: <sip:{user}@{edge[0]}>{kw.get('to_tag', '')}",
        f"Call-ID: {call_id}",
        f"CSeq: {kw.get('cseq', 1)} {method}",
        f"Contact: <sip:bench@{local[0]}:{local[1]}>",
    ]
    if body:
        lines.append("Content-Type: application/sdp")
    return ("\r\n".join(lines) + f"\r\nContent-Length: {len(body)}\r\n\r\n{body}").encode()


def probe(edge: tuple[str, int], until: float, out: dict[str, Any]) -> None:
    """OPTIONS every 50 ms from PROBE_SOURCE: round trips (s), and how many got no answer."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((PROBE_SOURCE, 0))
    sock.settimeout(2.0)
    rtts: list[float] = []
    lost = 0
    while time.monotonic() < until:
        t0 = time.monotonic()
        sock.sendto(message("OPTIONS", "probe", edge, sock.getsockname()), edge)
        try:
            sock.recv(65536)
            rtts.append(time.monotonic() - t0)
        except TimeoutError:
            lost += 1
        time.sleep(max(0.0, 0.05 - (time.monotonic() - t0)))
    sock.close()
    out.update(rtts=rtts, lost=lost)


def genuine_call(edge: tuple[str, int], call_id: str, out: dict[str, Any]) -> None:
    """INVITE → 100, 200 (times from the INVITE), ACK, BYE; the INVITE resent as UDP does."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((CALLER_SOURCE, 0))
    local = sock.getsockname()
    kw = {"tag": secrets.token_hex(4), "call_id": secrets.token_hex(8)}
    invite = message("INVITE", call_id, edge, local, body=SDP, **kw)
    t0 = time.monotonic()
    sock.sendto(invite, edge)
    resend, interval = t0 + 0.5, 0.5
    while time.monotonic() - t0 < 20 and "ok_s" not in out:
        sock.settimeout(max(0.01, resend - time.monotonic()))
        try:
            data = sock.recv(65536)
        except TimeoutError:
            sock.sendto(invite, edge)  # Timer A
            interval *= 2
            resend = time.monotonic() + interval
            continue
        status = int(data[8:11])
        if status == 100:
            out.setdefault("trying_s", time.monotonic() - t0)
        elif status >= 200:
            out["ok_s" if status < 300 else "failed"] = time.monotonic() - t0
            head = data.split(b"\r\n\r\n", 1)[0].decode()
            to = next(x for x in head.split("\r\n") if x.lower().startswith("to:"))
            to_tag = ";tag=" + to.split("tag=")[1]
            sock.sendto(message("ACK", call_id, edge, local, to_tag=to_tag, **kw), edge)
            sock.sendto(message("BYE", call_id, edge, local, to_tag=to_tag, cseq=2, **kw), edge)
    sock.close()


def genuine_tcp_call(edge: tuple[str, int], call_id: str, out: dict[str, Any]) -> None:
    """The genuine call over TCP: INVITE → 100, 200 (times), ACK, BYE; or ``refused``."""
    sock = socket.create_connection(edge, timeout=10, source_address=(CALLER_SOURCE, 0))
    local = sock.getsockname()
    kw = {"tag": secrets.token_hex(4), "call_id": secrets.token_hex(8), "transport": "TCP"}
    t0 = time.monotonic()
    buffer = b""
    try:
        sock.sendall(message("INVITE", call_id, edge, local, body=SDP, **kw))
        while b"SIP/2.0 200" not in buffer:
            data = sock.recv(65536)
            if not data:
                out["refused"] = round(time.monotonic() - t0, 3)
                return
            buffer += data
            if b"SIP/2.0 100" in buffer:
                out.setdefault("trying_s", time.monotonic() - t0)
        out["ok_s"] = time.monotonic() - t0
        head = buffer[buffer.index(b"SIP/2.0 200") :].split(b"\r\n\r\n", 1)[0].decode()
        to = next(x for x in head.split("\r\n") if x.lower().startswith("to:"))
        to_tag = ";tag=" + to.split("tag=")[1]
        sock.sendall(message("ACK", call_id, edge, local, to_tag=to_tag, **kw))
        sock.sendall(message("BYE", call_id, edge, local, to_tag=to_tag, cseq=2, **kw))
        time.sleep(0.2)
    except (ConnectionError, TimeoutError) as exc:
        out["refused"] = repr(exc)
    finally:
        sock.close()


def idle_connections(edge: tuple[str, int], count: int) -> list[socket.socket]:
    """``count`` TCP connections that send nothing, 32 per address (the per-source limit)."""
    return [
        socket.create_connection(edge, timeout=5, source_address=(f"127.0.4.{n // 32 + 1}", 0))
        for n in range(count)
    ]


def pct(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--open", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--method", default="OPTIONS")
    parser.add_argument("--sources", type=int, default=1)
    parser.add_argument("--tcp-idle", type=int, default=0, help="idle TCP connections first")
    parser.add_argument("--tree", help="run the edge from this checkout")
    parser.add_argument("--json")
    args = parser.parse_args()
    cores = sorted(os.sched_getaffinity(0))
    edge_cpus = {cores[0]} if len(cores) > 1 else None
    other_cpus = set(cores[1:]) or None
    http_port, sip_port = tl.free_port(), tl.free_port()
    tmp = Path(tempfile.mkdtemp(prefix="sip-flood-"))
    cfg = tmp / "edge.yaml"
    config(cfg, http_port, sip_port)
    env = dict(os.environ, TWILIO_LOAD_LAG=str(tmp / "lag.json"))
    tree = Path(args.tree).resolve() if args.tree else tl.ROOT
    env["PYTHONPATH"] = str(tree)
    cmd = [sys.executable, str(tree / "bench" / "twilio_load.py"), "--serve-edge", str(cfg)]
    with (tmp / "edge.log").open("wb") as log:
        edge_proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tree)
    if edge_cpus:
        os.sched_setaffinity(edge_proc.pid, edge_cpus)
    if other_cpus:
        os.sched_setaffinity(0, other_cpus)
    edge = ("127.0.0.1", sip_port)
    base = f"http://127.0.0.1:{http_port}"
    result: dict[str, Any] = {"open": args.open, "rate": args.rate, "sources": args.sources}
    try:
        tl.wait_http(base + "/healthz", edge_proc, tmp / "edge.log")
        call_id = register(base)
        opened = 0
        for n in range(args.open // 200 + (args.open % 200 > 0)):
            count = min(200, args.open - n * 200)
            got = flood(edge, "OPTIONS", 5000, 0, f"127.0.1.{n + 1}", count=count, linger=0.05)
            opened += int(str(got["answered"]))
        result["opened_answered"] = opened
        if args.tcp_idle:
            held = idle_connections(edge, args.tcp_idle)
            time.sleep(0.5)
            tcp_call: dict[str, Any] = {}
            genuine_tcp_call(edge, call_id, tcp_call)
            result.update(tcp_idle=len(held), genuine_tcp=tcp_call)
            for sock in held:
                sock.close()
            call_id = register(base)
        floods = [
            subprocess.Popen(
                [sys.executable, "-m", "tests.sip.flood", f"127.0.0.1:{sip_port}",
                 "--method", args.method, "--rate", str(args.rate / args.sources),
                 "--seconds", str(args.seconds),
                 "--source", "127.0.0.1" if args.sources == 1 else f"127.0.2.{i + 1}"],
                cwd=tl.ROOT, stdout=subprocess.PIPE,
            )
            for i in range(args.sources)
        ]  # fmt: skip
        probed: dict[str, Any] = {}
        called: dict[str, Any] = {}
        until = time.monotonic() + args.seconds
        prober = threading.Thread(target=probe, args=(edge, until, probed))
        prober.start()
        time.sleep(1.0)
        genuine_call(edge, call_id, called)
        prober.join()
        sent = answered = 0
        for proc in floods:
            out, _ = proc.communicate(timeout=args.seconds + 30)
            got = json.loads(out)
            sent, answered = sent + got["sent"], answered + got["answered"]
        result.update(flood_sent=sent, flood_answered=answered, genuine=called)
        rtts = probed["rtts"]
        result["probe_ms"] = {
            "p50": round(pct(rtts, 0.5) * 1000, 2),
            "p99": round(pct(rtts, 0.99) * 1000, 2),
            "max": round(max(rtts, default=float("nan")) * 1000, 2),
            "answered": len(rtts),
            "lost": probed["lost"],
        }
    finally:
        tl.stop(edge_proc)
    lags = json.loads((tmp / "lag.json").read_text())["lags"] if (tmp / "lag.json").exists() else []
    result["loop_lag_ms"] = {
        "p50": round(pct(lags, 0.5) * 1000, 2),
        "p99": round(pct(lags, 0.99) * 1000, 2),
        "max": round(max(lags, default=float("nan")) * 1000, 2),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
