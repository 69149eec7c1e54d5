"""What every ``telephony-edge simulate <network>`` command shares.

The simulators act as a network toward a running edge; before a call they
wait for the edge to be ready and check their inputs, so a typo costs no
call. Network-neutral: each network's simulator module uses these.
"""

from __future__ import annotations

import argparse
import asyncio
import audioop
import os
import socket
import struct
import wave
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import aiohttp
from yarl import URL

from telephony_edge.errors import UserError, os_reason

#: the caller the simulators present unless told otherwise
DEFAULT_FROM = "+15555550100"

EXIT_USAGE = 2
PLAYOUT_DELAY_S = 0.04  # a network's jitter buffer, modelled: a talkspurt starts this late
TALKSPURT_GAP_S = 0.25
JITTER_BUCKETS = 100  # a pause longer than this is silence between turns, not a glitch


async def wait_until_ready(
    session: aiohttp.ClientSession, base_url: str, *, within_s: float = 15.0
) -> None:
    """Poll the edge's ``/readyz`` until it answers 200, so a call is not placed too early.

    Raises :class:`EdgeNotReady` (one line saying what was last seen) after
    ``within_s``, or at once when the URL answers but is no edge (404).
    """
    loop = asyncio.get_running_loop()
    url = base_url.rstrip("/") + "/readyz"
    deadline = loop.time() + within_s
    while True:
        try:
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as resp:
                if resp.status == 200:
                    return
                last = f"/readyz answered {resp.status}"
                if resp.status == 404:
                    raise EdgeNotReady(f"{url} answered 404: is {base_url} a telephony-edge?")
                if resp.status == 503:
                    last += " (draining)"
        except aiohttp.ClientConnectorError as exc:
            last = os_reason(exc.os_error)
        except (aiohttp.ClientError, TimeoutError) as exc:
            last = str(exc) or type(exc).__name__
        if loop.time() >= deadline:
            raise EdgeNotReady(
                f"the edge at {base_url} is not ready after {within_s:g} s ({last}); "
                "is `telephony-edge serve` running there?"
            )
        await asyncio.sleep(0.2)


class EdgeNotReady(UserError):
    """The edge never answered ``/readyz`` with 200 in time."""


class CallFailed(UserError):
    """The simulated call failed: the command says why on one line and exits 1.

    Raised after the summary and the WAV are written, so what the caller
    heard is still there to look at.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(f"the call failed: {' '.join(reason.split())}", 1)


def unanswered_reason(media: str, said: Sequence[str]) -> str:
    """The edge answered the webhook without connecting the call (unknown number, full...)."""
    words = " / ".join(text for text in said if text)
    return f"the edge answered without a {media}" + (f' and said "{words}"' if words else "")


def silent_end_reason(how: str, close_code: int | None, close_reason: str = "") -> str:
    """The edge ended the call before the agent said a word: the agent core never spoke.

    The edge's log has the cause (an unreachable agent core, say); the
    network sees only the end, and a close code or reason if the edge sent one.
    """
    reason = f"the edge {how} before the agent said anything"
    if close_code not in (None, 1000) or close_reason:
        reason += f" (close {close_code} {close_reason})".replace(" )", ")")
    return reason + "; the edge's log says why (is its agent core reachable?)"


def check_url(url: str) -> None:
    """``--url`` must be an absolute http(s) URL."""
    if URL(url).scheme not in ("http", "https") or not URL(url).host:
        raise UserError(f"--url {url}: not an http:// or https:// URL", EXIT_USAGE)


def check_out(out: str) -> None:
    """``--out`` must be a file path in a writable folder (checked before the call)."""
    target = Path(out)
    folder = target.parent
    if target.is_dir():
        raise UserError(f"--out {out}: is a folder; give a file name", EXIT_USAGE)
    if not folder.is_dir():
        raise UserError(f"--out {out}: folder {folder} does not exist", EXIT_USAGE)
    if not os.access(folder, os.W_OK):
        raise UserError(f"--out {out}: folder {folder} is not writable", EXIT_USAGE)


def speak_after_arg(text: str) -> float | Literal["greeting"]:
    if text == "greeting":
        return "greeting"
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds <= 600:
        raise argparse.ArgumentTypeError(f"{text!r}: 'greeting' or seconds (0-600)")
    return seconds


def port_arg(text: str) -> int:
    """argparse type: a TCP port (0 where the option allows "none")."""
    port = int(text) if text.isascii() and text.isdigit() else -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0-65535)")
    return port


def dtmf_arg(item: str) -> tuple[float, str]:
    digit, _, at = item.partition("@")
    try:
        seconds = float(at or 0)
    except ValueError:
        seconds = -1.0
    if len(digit) != 1 or digit not in "0123456789*#ABCD" or seconds < 0:
        raise argparse.ArgumentTypeError(f"{item!r}: DIGIT@SECONDS, e.g. 5@3.5")
    return seconds, digit


class PlayoutBuffer:
    """A network's playout buffer on the caller's side, modelled for one call.

    Audio plays at real time from when it arrives (plus ``PLAYOUT_DELAY_S``
    at the start of a talkspurt); what arrives after the buffer ran dry
    within a talkspurt is a gap the caller hears (``late``); arrival lateness
    against the talkspurt's 20 ms grid goes into ``jitter`` (1 ms buckets).
    ``limit_s`` bounds how far ahead audio may be queued (Vonage's buffer):
    beyond it a chunk is dropped (``overflow``). ``render`` is what the
    caller heard, silences included.
    """

    __slots__ = (
        "chunks", "end", "frame_bytes", "jitter", "late", "limit_s", "overflow", "peak",
        "rate", "silence", "spurt_n", "spurt_t0", "t0", "width",
    )  # fmt: skip

    def __init__(
        self,
        t0: float,
        *,
        rate: int,
        width: int,
        silence: bytes,
        limit_s: float | None = None,
    ) -> None:
        self.t0 = t0
        self.rate, self.width, self.silence, self.limit_s = rate, width, silence, limit_s
        self.frame_bytes = rate * width // 50  # 20 ms
        self.end = t0  # when the queued audio finishes playing
        self.chunks: list[tuple[float, bytes]] = []  # (start time, audio)
        self.overflow = 0
        self.peak = 0.0
        self.late = 0
        self.jitter = [0] * JITTER_BUCKETS
        self.spurt_t0 = t0
        self.spurt_n = 0

    def push(self, now: float, audio: bytes) -> None:
        if self.end < now:  # the buffer ran dry: a new talkspurt, or a gap the caller hears
            if self.chunks and now - self.end < TALKSPURT_GAP_S:
                self.late += 1
            else:
                self.spurt_t0, self.spurt_n = now, 0
            self.end = now + PLAYOUT_DELAY_S
        lateness_ms = int((now - self.spurt_t0 - self.spurt_n * 0.02) * 1000)
        self.jitter[min(max(lateness_ms, 0), JITTER_BUCKETS - 1)] += 1
        self.spurt_n += max(1, len(audio) // self.frame_bytes)
        ahead = self.end - now
        if self.limit_s is not None and ahead > self.limit_s + PLAYOUT_DELAY_S:
            self.overflow += 1
            return
        self.peak = max(self.peak, ahead)
        self.chunks.append((self.end, audio))
        self.end += len(audio) / (self.width * self.rate)

    def clear(self, now: float) -> int:
        """Drop what has not played yet; how many chunks were dropped."""
        kept = [c for c in self.chunks if c[0] < now]
        dropped = len(self.chunks) - len(kept)
        self.chunks = kept
        self.end = now
        return dropped

    def render(self) -> bytes:
        out = bytearray()
        for start, audio in self.chunks:
            pos = round((start - self.t0) * self.rate) * self.width
            if pos > len(out):
                out += self.silence[:1] * (pos - len(out))
            out[pos : pos + len(audio)] = audio
        return bytes(out)


def add_call_arguments(p: argparse.ArgumentParser, sent_at: str) -> None:
    """The options every ``simulate <network>`` command has: the edge, the call, the caller's
    audio (``sent_at``: the rate the network carries it at) and when the caller speaks."""
    p.add_argument("--url", required=True, help="the edge's base URL, e.g. http://127.0.0.1:8080")
    p.add_argument("--to", required=True, help="the dialled number (one of the edge's numbers)")
    p.add_argument("--from", dest="from_", default=DEFAULT_FROM, help="the caller's number")
    p.add_argument(
        "--wav", required=True, help=f"what the caller says (any WAV; sent at {sent_at})"
    )
    p.add_argument("--out", required=True, help="where to write what the caller heard (WAV)")
    p.add_argument(
        "--speak-after",
        type=speak_after_arg,
        default="greeting",
        metavar="greeting|SECONDS",
        help="when the caller starts talking: once the agent's greeting has played (default), "
        "or that many seconds into the call (0: at once, over the greeting: a barge-in)",
    )
    p.add_argument(
        "--dtmf",
        action="append",
        type=dtmf_arg,
        default=[],
        metavar="DIGIT@SECONDS",
        help="press a key that many seconds after the caller starts talking, e.g. 5@3.5 "
        "(repeatable)",
    )
    p.add_argument("--tail", type=float, default=20.0, help="max seconds to wait for the reply")
    p.add_argument(
        "--wait-ready",
        type=float,
        default=15.0,
        metavar="SECONDS",
        help="wait up to this long for the edge's /readyz before calling (default: 15)",
    )


def load_wav_pcm(path: str | Path, rate: int) -> bytes:
    """A WAV file of any rate, width and channel count as mono PCM16 at ``rate``."""
    with wave.open(str(path)) as wav:
        found, channels, width = wav.getframerate(), wav.getnchannels(), wav.getsampwidth()
        data = wav.readframes(wav.getnframes())
    if width != 2:
        data = audioop.lin2lin(data, width, 2)
    if channels == 2:
        data = audioop.tomono(data, 2, 0.5, 0.5)
    elif channels != 1:
        raise ValueError(f"{path}: {channels} channels; mono or stereo only")
    if found != rate:
        data = audioop.ratecv(data, 2, 1, found, rate, None)[0]
    return bytes(data)


def write_wav_pcm(path: str | Path, pcm: bytes, rate: int) -> None:
    """Mono PCM16 at ``rate`` as a WAV file."""
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(pcm)


def drop_connection(ws: aiohttp.ClientWebSocketResponse) -> None:
    """Cut a media socket's connection at once: a TCP reset, no close frame (a network
    blip between the carrier and the edge, or the carrier's media server lost)."""
    sock = ws.get_extra_info("socket")
    if sock is not None:  # linger 0: the close sends a reset, not a FIN
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    connection = ws._response.connection  # aiohttp has no public handle on it
    if connection is not None and connection.transport is not None:
        connection.transport.abort()
