"""Kamailio as a registrar (registrar + usrloc, in memory) with digest, for the tests.

:func:`start_registrar` writes a configuration: a REGISTER must pass digest
authentication (the ``auth`` module's ``pv_www_authenticate`` against one
fixed password: no database) before ``save("location")``; an INVITE to an
address of record is looked up (``lookup("location")``: the Request-URI
becomes the registered Contact), Record-Routed and relayed; in-dialog
requests follow ``loose_route``. Bindings live in memory only, so a restart
(:meth:`Registrar.restart`, same port) forgets them, as a crashed registrar
would. Every REGISTER is logged (``xlog``: its first and last Contact), which
:meth:`Registrar.registers` and :meth:`Registrar.removals` read.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import free_port, require_binary
from tests.sip.kamailio import MODULES, Proxy, _answers_options

CONFIG = """#!KAMAILIO
debug=2
log_stderror=yes
children=1
dns=no
rev_dns=no
auto_aliases=no
listen=udp:127.0.0.1:{port}
mpath="{modules}"
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "rr.so"
loadmodule "maxfwd.so"
loadmodule "pv.so"
loadmodule "siputils.so"
loadmodule "textops.so"
loadmodule "xlog.so"
loadmodule "auth.so"
loadmodule "usrloc.so"
loadmodule "registrar.so"
modparam("usrloc", "db_mode", 0)
modparam("registrar", "min_expires", 5)
modparam("registrar", "max_expires", 3600)

request_route {{
    if (!mf_process_maxfwd_header("10")) {{ sl_send_reply("483", "Too Many Hops"); exit; }}
    if (has_totag()) {{
        if (loose_route()) {{ t_relay(); exit; }}
        if (is_method("ACK") && t_check_trans()) {{ t_relay(); }}
        exit;
    }}
    if (is_method("OPTIONS")) {{ sl_send_reply("200", "OK"); exit; }}
    if (is_method("CANCEL")) {{ if (t_check_trans()) {{ t_relay(); }} exit; }}
    if (is_method("REGISTER")) {{
        if (!pv_www_authenticate("$td", "{password}", "0")) {{
            www_challenge("$td", "0");
            exit;
        }}
        xlog("L_NOTICE", "REGISTER of $tU contact=$ct last=$(hdr(Contact)[-1])\\n");
        if (!save("location")) {{ sl_reply_error(); }}
        exit;
    }}
    if (is_method("INVITE")) {{
        if (!lookup("location")) {{ sl_send_reply("404", "Not Found"); exit; }}
        record_route();
        t_relay();
        exit;
    }}
    sl_send_reply("405", "Method Not Allowed");
}}
"""


@dataclass
class Registrar:
    proxy: Proxy
    directory: Path
    password: str

    @property
    def port(self) -> int:
        return self.proxy.port

    def registers(self) -> list[str]:
        """The (first) Contact of every REGISTER it took so far, in order (this run's log)."""
        log = self.proxy.log.read_text(errors="replace")
        return re.findall(r"REGISTER of \S+ contact=(\S+)", log)

    def removals(self) -> list[str]:
        """The last Contacts of REGISTERs that remove a binding (``;expires=0``)."""
        log = self.proxy.log.read_text(errors="replace")
        return [
            c
            for c in re.findall(r"REGISTER of \S+ contact=\S+ last=(\S+)", log)
            if c.endswith(";expires=0")
        ]

    async def stop(self) -> None:
        await self.proxy.stop()

    async def restart(self) -> None:
        """Stop, then start again on the same port: every binding is forgotten."""
        await self.proxy.stop()
        self.proxy = await _start(self.directory, self.port, self.password)


async def start_registrar(directory: Path, password: str) -> Registrar:
    """Kamailio on a free UDP port of 127.0.0.1, registering with digest (any user, this
    password), its realm the To host."""
    proxy = await _start(directory, free_port(), password)
    return Registrar(proxy, directory, password)


async def _start(directory: Path, port: int, password: str) -> Proxy:
    binary = require_binary("kamailio", "apt-get install -y kamailio")
    config = directory / "registrar.cfg"
    config.write_text(
        CONFIG.format(port=port, modules=MODULES, password=password), encoding="utf-8"
    )
    log = directory / "registrar.log"
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            binary, "-f", str(config), "-DD", "-E", "-n", "1", "-m", "32", "-M", "4",
            "-Y", str(directory), "-w", str(directory),
            stdout=out, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
    proxy = Proxy(process, port, log)
    await _answers_options(proxy)
    return proxy
