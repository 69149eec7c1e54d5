"""baresip as a real softphone callee: it listens on a free port of 127.0.0.1 (or ``::1``,
IPv6 only) and answers the first call at once (its account's ``answermode=auto``),
playing the speech fixture and recording what it hears (the folder and audio of
:mod:`tests.sip.baresip`).

Over TLS it presents ``certificate`` (its ``sip_certificate``: the PEM certificate and
key in one file) on the port after its UDP one, trusts ``cafile`` (``sip_cafile``) for
its own connections to the edge's listener (its BYE), and its ``srtp`` module answers the
media as the account's ``mediaenc`` says (``srtp``: best effort, ``srtp-mand``:
``RTP/SAVP``)."""

from __future__ import annotations

import asyncio
import re
import socket
from pathlib import Path

from tests.sip.baresip import (
    BaresipCall,
    baresip_binary,
    heard_audio,
    listen_port,
    microphone,
    write_config,
)
from tests.sip.certs import Issued


class Callee:
    """A running baresip waiting for the edge's call at ``uri`` (``tls_port``: over TLS)."""

    def __init__(
        self, process: asyncio.subprocess.Process, folder: Path, port: int, where: str
    ) -> None:
        self.process = process
        self.folder = folder
        self.uri = f"sip:callee@{where}:{port}"
        self.tls_port = port + 1

    async def finished(self, within: float) -> BaresipCall:
        out, _ = await asyncio.wait_for(self.process.communicate(), within)
        log = out.decode(errors="replace")
        return BaresipCall(self.process.returncode or 0, log, heard_audio(self.folder))


async def answering(
    folder: Path,
    seconds: int,
    certificate: Issued | None = None,
    mediaenc: str | None = None,
    host: str = "127.0.0.1",
    cafile: Path | None = None,
) -> Callee:
    """baresip answering on a free UDP port of ``host`` (and TLS on the next one, presenting
    ``certificate``; ``cafile``: the CA of the edge's TLS listener, where its requests in
    the call go); it quits (hanging up) after ``seconds``."""
    port = listen_port(host)
    mic = microphone(folder, trailing_silence_s=seconds)
    write_config(folder, mic, "udp", mediaenc, host)
    config = folder / "config"
    where = f"[{host}]" if ":" in host else host
    text = re.sub(r"(?m)^sip_listen .*$", f"sip_listen {where}:{port}", config.read_text())
    if certificate is not None:
        pem = folder / "sip_certificate.pem"
        pem.write_bytes(certificate.certificate.read_bytes() + certificate.private_key.read_bytes())
        text += f"sip_certificate {pem}\n"
    if cafile is not None:
        text += f"sip_cafile {cafile}\n"
    config.write_text(text)
    account = f"<sip:callee@{where}>;regint=0;answermode=auto"
    account += f";mediaenc={mediaenc}" if mediaenc else ""
    (folder / "accounts").write_text(account + "\n")
    process = await asyncio.create_subprocess_exec(
        baresip_binary(), *(["-6"] if ":" in host else []), "-f", str(folder), "-t", str(seconds),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    await _bound(host, port, process)
    return Callee(process, folder, port, where)


async def _bound(
    host: str, port: int, process: asyncio.subprocess.Process, within: float = 10.0
) -> None:
    """Until something listens on UDP ``host:port`` (baresip, once started)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    while loop.time() < deadline:
        assert process.returncode is None, "baresip quit before it listened"
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            try:
                probe.bind((host, port))
            except OSError:
                return
        await asyncio.sleep(0.05)
    raise AssertionError(f"baresip did not listen on {port}")
