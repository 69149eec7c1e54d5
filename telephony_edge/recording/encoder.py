"""mp3 and ogg encoded while the call runs: the writer's PCM through a pipe to ffmpeg.

Theory of operation
-------------------
One ffmpeg process per recorded call (mp3: libmp3lame, ogg: libvorbis, each
at ffmpeg's default rate), started with the recording and fed raw PCM16 at
16 kHz on its stdin. ffmpeg writes the file itself, on the spool, as it
goes: nothing is converted when the call ends, no temporary file is made,
and closing its stdin makes it finish the file (an mp3's Xing header, the
ogg's last page) and exit. A worker that dies closes the pipe too, so its
ffmpeg still leaves a playable file.

Bounded: :meth:`FfmpegEncoder.write` puts one flush (about a second: 64 KB
of stereo) into the pipe's transport, and the recording's flush task then
awaits :meth:`drain`, which returns once the pipe has taken all of it (so a
worker killed after a flush loses none of it: ffmpeg still reads it). While
ffmpeg lags, the writer's tracks hold the frames, and drop them (counted)
past their ``max_pending_s``. ffmpeg's own
memory does not grow with the call (about 11 MB private per process; its
libraries' pages are shared between the calls), and it writes its file 256
KiB at a time. Its stderr is read as it
comes, and only the last :data:`STDERR_TAIL` bytes are kept, for the log.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from telephony_edge.audio.frames import SAMPLE_RATE
from telephony_edge.recording.writer import Channels

#: the formats only ffmpeg writes, and the encoder for each
CODECS = {"mp3": "libmp3lame", "ogg": "libvorbis"}
#: how long a closed encoder may take to finish its file before it is killed
EXIT_TIMEOUT_S = 10.0
STDERR_TAIL = 2000


class EncoderFailed(Exception):
    """ffmpeg could not be started, or exited with an error (its last words in the text)."""


def ffmpeg_command(ffmpeg: str, path: Path, fmt: str, channels: Channels) -> list[str]:
    # the input's layout is given, so ffmpeg probes nothing and starts writing at once
    return [
        ffmpeg,
        *("-hide_banner", "-loglevel", "error"),
        *("-f", "s16le", "-ar", str(SAMPLE_RATE), "-ac", "2" if channels == "stereo" else "1"),
        *("-i", "pipe:0", "-threads", "1", "-c:a", CODECS[fmt], "-f", fmt, "-y", str(path)),
    ]


class FfmpegEncoder:
    """A :class:`~telephony_edge.recording.writer.PcmSink` that ffmpeg encodes into ``path``."""

    def __init__(self, ffmpeg: str, path: Path, fmt: str, channels: Channels) -> None:
        self.command = ffmpeg_command(ffmpeg, path, fmt, channels)
        self._process: asyncio.subprocess.Process | None = None
        self._stderr = b""
        self._reader: asyncio.Task[None] | None = None
        self._lost = False

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    async def start(self) -> None:
        """Start ffmpeg (raises :class:`EncoderFailed` if it cannot be)."""
        try:
            self._process = await asyncio.create_subprocess_exec(
                *self.command,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            raise EncoderFailed(f"ffmpeg not started: {exc}") from None
        assert self._process.stdin is not None
        # drain() waits until the pipe has it all: what a flush wrote outlives this process
        self._process.stdin.transport.set_write_buffer_limits(high=0)
        self._reader = asyncio.create_task(self._read_stderr())

    async def _read_stderr(self) -> None:
        assert self._process is not None and self._process.stderr is not None
        while chunk := await self._process.stderr.read(4096):
            self._stderr = (self._stderr + chunk)[-STDERR_TAIL:]

    def write(self, pcm: bytes) -> None:
        """Hand ffmpeg ``pcm`` (buffered in the pipe's transport; :meth:`drain` waits)."""
        stdin = self._stdin()
        if stdin is None:
            return  # not running: what the tracks held is not recorded
        try:
            stdin.write(pcm)
        except (ConnectionError, RuntimeError):  # uvloop: the pipe closed when ffmpeg exited
            self._lost = True

    async def drain(self) -> None:
        """Wait until the pipe took it all; raises :class:`EncoderFailed` if ffmpeg is gone."""
        stdin = self._stdin()
        if stdin is not None:
            try:
                await stdin.drain()
            except (ConnectionError, RuntimeError):
                self._lost = True
        if self._process is not None and (self._lost or self._process.returncode is not None):
            self._lost = True
            raise EncoderFailed(await self._last_words())

    def _stdin(self) -> asyncio.StreamWriter | None:
        process = self._process
        if process is None or process.stdin is None or self._lost:
            return None
        if process.returncode is not None or process.stdin.transport.is_closing():
            self._lost = True  # ffmpeg exited before its input ended: it failed
            return None
        return process.stdin

    def close(self) -> None:
        """Close ffmpeg's stdin: it encodes what is left, finishes the file and exits."""
        if self._process is not None and self._process.stdin is not None:
            self._process.stdin.close()

    async def wait(self) -> None:
        """Wait for ffmpeg to exit after :meth:`close` (killed after :data:`EXIT_TIMEOUT_S`)."""
        process = self._process
        if process is None:
            return
        if process.stdin is not None:
            with contextlib.suppress(ConnectionError, BrokenPipeError):
                await process.stdin.wait_closed()
        try:
            await asyncio.wait_for(process.wait(), EXIT_TIMEOUT_S)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise EncoderFailed(f"ffmpeg did not finish in {EXIT_TIMEOUT_S:.0f} s") from None
        if process.returncode != 0:
            raise EncoderFailed(await self._last_words())

    async def _last_words(self) -> str:
        process = self._process
        assert process is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(process.wait(), EXIT_TIMEOUT_S)
        if self._reader is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._reader, 1.0)
        said = self._stderr.decode(errors="replace").strip() or "(nothing on stderr)"
        return f"ffmpeg exited {process.returncode}: {said}"
