"""baresip as a real softphone callee: it listens on a free port of 127.0.0.1 and answers
the first call at once (its account's ``answermode=auto``), playing the speech fixture and
recording what it hears (the folder and audio of :mod:`tests.sip.baresip`).

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

    def __init__(self, process: asyncio.subprocess.Process, folder: Path, port: int) -> None:
        self.process = process
        self.folder = folder
        self.uri = f"sip:callee@127.0.0.1:{port}"
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
    cafile: Path | None = None,
) -> Callee:
    """baresip answering on a free UDP port (and TLS on the next one, presenting
    ``certificate``; ``cafile``: the CA of the edge's TLS listener, where its requests in
    the call go); it quits (hanging up) after ``seconds``."""
    port = listen_port()
    write_config(folder, microphone(folder, trailing_silence_s=seconds), "udp", mediaenc)
    config = folder / "config"
    text = re.sub(r"(?m)^sip_listen .*$", f"sip_listen 127.0.0.1:{port}", config.read_text())
    if certificate is not None:
        pem = folder / "sip_certificate.pem"
        pem.write_bytes(certificate.certificate.read_bytes() + certificate.private_key.read_bytes())
        text += f"sip_certificate {pem}\n"
    if cafile is not None:
        text += f"sip_cafile {cafile}\n"
    config.write_text(text)
    account = "<sip:callee@127.0.0.1>;regint=0;answermode=auto"
    account += f";mediaenc={mediaenc}" if mediaenc else ""
    (folder / "accounts").write_text(account + "\n")
    process = await asyncio.create_subprocess_exec(
        baresip_binary(), "-f", str(folder), "-t", str(seconds),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    await _bound(port, process)
    return Callee(process, folder, port)


async def _bound(port: int, process: asyncio.subprocess.Process, within: float = 10.0) -> None:
    """Until something listens on UDP ``port`` (baresip, once started)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while loop.time() < deadline:
        assert process.returncode is None, "baresip quit before it listened"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                return
        await asyncio.sleep(0.05)
    raise AssertionError(f"baresip did not listen on {port}")
