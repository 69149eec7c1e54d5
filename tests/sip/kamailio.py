"""Kamailio as a record-routing proxy in front of the edge, for the tests.

:func:`start_proxy` writes a minimal configuration (tm, sl, rr: every INVITE
Record-Routed with ``record_route_preset("<name>:<port>")`` and relayed to the
edge; in-dialog requests by ``loose_route``), starts ``kamailio`` in the
foreground on a free UDP port of 127.0.0.1 and waits until it answers OPTIONS.
The name is one of Kamailio's aliases, so a request routed to it by that name,
or sent to its address, is recognised as its own and relayed on.
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import free_port, require_binary

CONFIG = """#!KAMAILIO
debug=2
log_stderror=yes
children=1
dns=no
rev_dns=no
auto_aliases=no
listen=udp:127.0.0.1:{port}
alias={name}:{port}
mpath="{modules}"
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "rr.so"
loadmodule "maxfwd.so"
loadmodule "pv.so"
loadmodule "siputils.so"
loadmodule "textops.so"

request_route {{
    if (!mf_process_maxfwd_header("10")) {{ sl_send_reply("483", "Too Many Hops"); exit; }}
    if (has_totag()) {{
        if (loose_route()) {{ t_relay(); exit; }}
        if (is_method("ACK") && t_check_trans()) {{ t_relay(); }}
        exit;
    }}
    if (is_method("OPTIONS")) {{ sl_send_reply("200", "OK"); exit; }}
    if (is_method("CANCEL")) {{ if (t_check_trans()) {{ t_relay(); }} exit; }}
    if (is_method("INVITE")) {{
        record_route_preset("{name}:{port}");
        $du = "sip:127.0.0.1:{edge_port}";
        t_relay();
        exit;
    }}
    sl_send_reply("405", "Method Not Allowed");
}}
"""

MODULES = "/usr/lib/x86_64-linux-gnu/kamailio/modules/"


@dataclass
class Proxy:
    process: asyncio.subprocess.Process
    port: int
    log: Path

    async def stop(self) -> None:
        if self.process.returncode is None:
            self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), 5)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()


async def start_proxy(directory: Path, edge_port: int, name: str) -> Proxy:
    """Kamailio on 127.0.0.1, Record-Routing as ``<name>:<port>``, relaying to the edge."""
    binary = require_binary("kamailio", "apt-get install -y kamailio")
    port = free_port()
    config = directory / "kamailio.cfg"
    config.write_text(
        CONFIG.format(port=port, name=name, edge_port=edge_port, modules=MODULES),
        encoding="utf-8",
    )
    log = directory / "kamailio.log"
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            binary, "-f", str(config), "-DD", "-E", "-n", "1", "-m", "32", "-M", "4",
            "-Y", str(directory), "-w", str(directory),
            stdout=out, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
    proxy = Proxy(process, port, log)
    await _answers_options(proxy)
    return proxy


async def start_config(directory: Path, config: Path, port: int, **defines: str) -> Proxy:
    """Kamailio on 127.0.0.1:``port`` running ``config`` as shipped, its ``#!define`` values
    given on the command line (``-A NAME=VALUE``, a string value in double quotes)."""
    binary = require_binary("kamailio", "apt-get install -y kamailio")
    args = [arg for name, value in defines.items() for arg in ("-A", f"{name}={value}")]
    log = directory / "kamailio.log"
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            binary, "-f", str(config), "-DD", "-E", "-m", "32", "-M", "4",
            "-Y", str(directory), "-w", str(directory), *args,
            stdout=out, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
    proxy = Proxy(process, port, log)
    await _answers_options(proxy)
    return proxy


async def _answers_options(proxy: Proxy, within: float = 10.0) -> None:
    probe = (
        f"OPTIONS sip:ping@127.0.0.1:{proxy.port} SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKprobe\r\n"
        "From: <sip:probe@127.0.0.1>;tag=p\r\nTo: <sip:ping@127.0.0.1>\r\n"
        "Call-ID: probe@127.0.0.1\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n"
        "Content-Length: 0\r\n\r\n"
    )
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        data = probe.replace("127.0.0.1:9", f"127.0.0.1:{sock.getsockname()[1]}").encode()
        while loop.time() < deadline:
            assert proxy.process.returncode is None, proxy.log.read_text(errors="replace")
            sock.sendto(data, ("127.0.0.1", proxy.port))
            await asyncio.sleep(0.1)
            try:
                if sock.recv(4096).startswith(b"SIP/2.0 200"):
                    return
            except BlockingIOError:
                continue
    raise AssertionError("kamailio did not answer: " + proxy.log.read_text(errors="replace"))
