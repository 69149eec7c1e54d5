"""baresip as a real softphone caller: a config folder, one dial, the audio it heard.

baresip 1.0 (Debian's ``baresip``) runs headless with ``-e "/dial URI" -t N``:
its ``aufile`` source plays a WAV as the caller's microphone (8 kHz mono) and
its ``sndfile`` filter writes what it decoded from the edge to
``dump-…-dec.wav`` in the config folder (1.0's ``aufile`` has no player).
Over TLS (``transport="tls"``) its ``srtp`` module encrypts the media as the
account's ``mediaenc`` says: ``srtp`` (best effort: ``RTP/AVP`` with
``a=crypto``), ``srtp-mand`` (``RTP/SAVP``), ``srtp-mandf`` (``RTP/SAVPF``).
On ``::1`` (``host``) it runs IPv6 only (``-6``, ``net_interface ::1``): its
SIP and its RTP over IPv6.
"""

from __future__ import annotations

import asyncio
import audioop
import socket
import wave
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import FIXTURES, free_port, require_binary


def baresip_binary() -> str:
    return require_binary("baresip", "apt-get install -y baresip baresip-core")


@dataclass
class BaresipCall:
    """What one baresip run left: its log and the audio it received from the edge."""

    returncode: int
    log: str
    heard: bytes  # PCM16 8 kHz mono, as baresip decoded it

    def heard_seconds(self, threshold: int = 300) -> float:
        """Seconds of what baresip heard that were louder than ``threshold`` (RMS)."""
        frames = [self.heard[i : i + 320] for i in range(0, len(self.heard) - 319, 320)]
        return sum(audioop.rms(f, 2) > threshold for f in frames) * 0.02


def listen_port(host: str = "127.0.0.1", avoid: range = range(0)) -> int:
    """A port for baresip's ``sip_listen`` on ``host``: it takes UDP and TCP there, and TLS
    on the next one, so all must be free (UDP too: an edge's RTP, another caller's, takes
    UDP ports that a TCP probe calls free), and outside ``avoid`` (the edges' RTP ranges:
    free now, a call's later)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(50):
        port = free_port()
        if port in avoid or port + 1 in avoid:
            continue
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as udp, socket.socket(family) as tls:
                udp.bind((host, port))
                tls.bind((host, port + 1))
        except OSError:
            continue
        return port
    raise AssertionError("no two free ports in a row for baresip")


def write_config(
    folder: Path,
    microphone: Path,
    transport: str,
    mediaenc: str | None = None,
    host: str = "127.0.0.1",
    avoid: range = range(0),
) -> None:
    """A baresip config folder: G.711 only, the WAV as microphone, the decoded audio dumped;
    with ``mediaenc``, SRTP (its ``srtp`` module) for the account; on ``host``; its RTP
    ports outside ``avoid`` (the edge's, when both take free ports)."""
    low = free_port() // 2 * 2
    while low + 10 >= avoid.start and low < avoid.stop:
        low = free_port() // 2 * 2
    where = f"[{host}]" if ":" in host else host
    (folder / "config").write_text(
        "\n".join(
            [
                "poll_method epoll",
                f"sip_listen {where}:{listen_port(host, avoid)}",
                *([f"net_interface {host}"] if ":" in host else []),
                "audio_player auloop,nil",
                f"audio_source aufile,{microphone}",
                "audio_alert aufile,/dev/null",
                "audio_srate 8000",
                "audio_channels 1",
                f"rtp_ports {low}-{low + 10}",
                "module_path /usr/lib/baresip/modules",
                "module g711.so",
                "module aufile.so",
                "module sndfile.so",
                *(["module srtp.so"] if mediaenc else []),
                f"snd_path {folder}",
                "module_app account.so",
                "module_app menu.so",
                "",
            ]
        )
    )
    account = f"<sip:caller@{where};transport={transport}>;regint=0"
    if mediaenc:
        account += f";mediaenc={mediaenc}"
    (folder / "accounts").write_text(account + "\n")


def microphone(folder: Path, trailing_silence_s: float, again_after_s: float | None = None) -> Path:
    """The speech fixture at 8 kHz, then silence (baresip hangs up when its source ends);
    with ``again_after_s``, the speech again after that much silence (a caller who goes on)."""
    with wave.open(str(FIXTURES / "speech_table.wav")) as wav:
        pcm16k = wav.readframes(wav.getnframes())
    speech, _ = audioop.ratecv(pcm16k, 2, 1, 16000, 8000, None)
    pcm = speech
    if again_after_s is not None:
        pcm += bytes(int(16000 * again_after_s)) + speech
    pcm += bytes(int(16000 * trailing_silence_s))
    path = folder / "microphone.wav"
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(8000)
        out.writeframes(pcm)
    return path


def heard_audio(folder: Path) -> bytes:
    """What baresip decoded from the edge (its ``sndfile`` dumps), PCM16 8 kHz."""
    heard = b""
    for dump in sorted(folder.glob("dump-*-dec.wav")):
        with wave.open(str(dump)) as wav:
            heard += wav.readframes(wav.getnframes())
    return heard


@dataclass
class Dialling:
    """A baresip that is dialling or in its call: :meth:`hang_up` (its BYE now), then
    :meth:`finished` (what it left)."""

    process: asyncio.subprocess.Process
    folder: Path
    seconds: int

    def hang_up(self) -> None:
        """Quit now: baresip hangs up its call (BYE) on SIGTERM, then exits."""
        if self.process.returncode is None:
            self.process.terminate()

    async def finished(self) -> BaresipCall:
        out, _ = await asyncio.wait_for(self.process.communicate(), self.seconds + 20)
        log = out.decode(errors="replace")
        return BaresipCall(self.process.returncode or 0, log, heard_audio(self.folder))


async def start(
    uri: str,
    folder: Path,
    transport: str,
    seconds: int = 8,
    mediaenc: str | None = None,
    host: str = "127.0.0.1",
    again_after_s: float | None = None,
    avoid: range = range(0),
) -> Dialling:
    """Start baresip dialling ``uri`` over ``transport`` (udp, tcp or tls) from ``host``; it
    quits after ``seconds`` (``again_after_s``: the caller speaks again, :func:`microphone`;
    ``avoid``: RTP ports it must not take).

    ``folder`` must exist (baresip's config and dumps go there).
    """
    mic = microphone(folder, seconds, again_after_s)
    write_config(folder, mic, transport, mediaenc, host, avoid)
    process = await asyncio.create_subprocess_exec(
        baresip_binary(), *(["-6"] if ":" in host else []),
        "-f", str(folder), "-e", f"/dial {uri};transport={transport}", "-t", str(seconds),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    return Dialling(process, folder, seconds)


async def dial(
    uri: str,
    folder: Path,
    transport: str,
    seconds: int = 8,
    mediaenc: str | None = None,
    host: str = "127.0.0.1",
    again_after_s: float | None = None,
) -> BaresipCall:
    """:func:`start`, and what baresip left once it quit."""
    dialling = await start(uri, folder, transport, seconds, mediaenc, host, again_after_s)
    return await dialling.finished()
