"""A moved call's recording: its workers' parts joined on the call's timeline, gaps silent.

Theory of operation
-------------------
A call that moves to another worker (issue 24) is recorded in *parts*, one
per worker that carried it: the first worker's file ``{call_id}.{fmt}``,
then ``{call_id}.g{generation}.{fmt}`` for each takeover. Each part knows
where it starts on the call's timeline (``start_s``: seconds after the first
part began, wall clock), and the call's live state lists the parts so far
(:meth:`~telephony_edge.recording.recorder.CallRecording.live_state`), so the
worker that ends the call knows them all. It joins them into one file,
``{call_id}.whole.{fmt}``: each part from its ``start_s``, silence where no
part covers the call (what a killed worker had not flushed, the move's gap,
a part that could not be read), a part cut where the next begins (the later
part is the one the call went on with). So the recording's timeline is the
call's: a sound at minute 3 of the call is at minute 3 of the file.

Parts are read as PCM16 at 16 kHz (a WAV directly, mp3/ogg decoded by
ffmpeg) and written through the same sinks a live recording uses (a
:class:`~telephony_edge.recording.writer.WavFile` or an ffmpeg encoder), a
few seconds at a time: memory does not grow with the call. The cost is one
pass over the call's audio when it ends, in a task of its own (WAV: a copy;
mp3/ogg: a decode and an encode, 3.9 CPU-s for 10 minutes of stereo mp3
on this project's machine, so some 23 s of one core for an hour-long call),
never while the call runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import wave
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from telephony_edge.audio.frames import SAMPLE_RATE, SAMPLE_WIDTH
from telephony_edge.recording.encoder import EncoderFailed, FfmpegEncoder
from telephony_edge.recording.writer import Channels, WavFile

log = logging.getLogger(__name__)

#: PCM read and written at a time (stereo: 640 KB)
CHUNK_S = 10


@dataclass(frozen=True, slots=True)
class Part:
    """One worker's stretch of a call's recording: its spool file, and where it starts."""

    file: str
    worker: str
    start_s: float


@dataclass(slots=True)
class Timeline:
    """A call's recording across its workers: when it began (Unix time), its parts so far
    (the last one this worker's)."""

    started_at: float
    parts: list[Part]

    @classmethod
    def first(cls, call_id: str, fmt: str, worker: str, now: float) -> Timeline:
        return cls(now, [Part(part_name(call_id, 0, fmt), worker, 0.0)])

    @classmethod
    def resumed(
        cls,
        live: Mapping[str, Any] | None,
        name: str,
        worker: str,
        *,
        now: float,
        elapsed_s: float,
    ) -> Timeline:
        """The timeline of a call taken over, from its live state's entry (``live``), this
        worker's part ``name`` starting now; without an entry the call began ``elapsed_s``
        ago and its earlier parts are unknown."""
        live = live or {}
        try:
            started_at = float(live["started_at"])
            parts = [
                Part(str(p["file"]), str(p["worker"]), float(p["start_s"])) for p in live["parts"]
            ]
        except (TypeError, KeyError, ValueError):
            started_at, parts = now - elapsed_s, []
        return cls(started_at, [*parts, Part(name, worker, max(0.0, now - started_at))])

    def live_state(self) -> dict[str, Any]:
        """The recording's entry in the call's live state (it changes only with a new part)."""
        return {"started_at": self.started_at, "parts": [asdict(p) for p in self.parts]}


def part_name(call_id: str, generation: int, fmt: str) -> str:
    """The spool file of ``call_id``'s part at ``generation`` (the first keeps the plain name)."""
    return f"{call_id}.{fmt}" if generation == 0 else f"{call_id}.g{generation}.{fmt}"


def is_part_of(call_id: str, name: str) -> bool:
    """Whether ``name`` (read from the live state) can be a part of ``call_id``'s recording:
    nothing else on the spool is ever opened, let alone deleted, as one."""
    return re.fullmatch(rf"{re.escape(call_id)}(\.g[0-9]+)?\.(wav|mp3|ogg)", name) is not None


def whole_name(call_id: str, fmt: str) -> str:
    """The joined recording of a call that moved."""
    return f"{call_id}.whole.{fmt}"


async def _wav_pcm(path: Path, channels: int) -> AsyncGenerator[bytes, None]:
    wav = await asyncio.to_thread(wave.open, str(path), "rb")
    with contextlib.closing(wav):
        layout = (wav.getnchannels(), wav.getsampwidth(), wav.getframerate())
        if layout != (channels, SAMPLE_WIDTH, SAMPLE_RATE):
            raise ValueError(f"{path.name}: {layout} is not this recording's layout")
        while chunk := await asyncio.to_thread(wav.readframes, CHUNK_S * SAMPLE_RATE):
            yield chunk


async def _decoded_pcm(ffmpeg: str, path: Path, channels: int) -> AsyncGenerator[bytes, None]:
    command = [
        ffmpeg,
        *("-hide_banner", "-loglevel", "error", "-i", str(path)),
        *("-f", "s16le", "-ar", str(SAMPLE_RATE), "-ac", str(channels), "pipe:1"),
    ]
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    assert process.stdout is not None and process.stderr is not None
    try:
        size = CHUNK_S * SAMPLE_RATE * SAMPLE_WIDTH * channels
        while chunk := await process.stdout.read(size):
            yield chunk
        said = await process.stderr.read()
        if await process.wait() != 0:  # a part cut off mid-frame: what was decoded is kept
            log.warning("%s decoded only in part: %s", path.name, said.decode(errors="replace"))
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


def part_pcm(path: Path, channels: int, ffmpeg: str | None) -> AsyncGenerator[bytes, None]:
    """A part's audio as PCM16 16 kHz with ``channels`` channels, a chunk at a time."""
    if path.suffix == ".wav":
        return _wav_pcm(path, channels)
    if ffmpeg is None:
        raise EncoderFailed(f"{path.name}: ffmpeg is needed to read it")
    return _decoded_pcm(ffmpeg, path, channels)


async def _write(sink: WavFile | FfmpegEncoder, pcm: bytes) -> None:
    if isinstance(sink, FfmpegEncoder):
        sink.write(pcm)
        await sink.drain()
    else:
        await asyncio.to_thread(sink.write, pcm)


async def join(
    parts: Sequence[tuple[Part, Path | None]],
    sink: WavFile | FfmpegEncoder,
    channels: Channels,
    ffmpeg: str | None,
) -> float:
    """Write ``parts`` (in order; None: a part not found) into ``sink`` on the call's
    timeline; the result's duration in seconds. The sink is started (an encoder), not closed.

    Raises what kept a part from being read (OSError, ValueError, :class:`EncoderFailed`).
    """
    width = SAMPLE_WIDTH * (2 if channels == "stereo" else 1)
    written = 0  # bytes of PCM handed to the sink
    for i, (part, path) in enumerate(parts):
        start = round(part.start_s * SAMPLE_RATE) * width
        while written < start:  # silence up to where the part begins
            pad = min(start - written, CHUNK_S * SAMPLE_RATE * width)
            await _write(sink, bytes(pad))
            written += pad
        if path is None:
            continue
        end = None
        if i + 1 < len(parts):  # cut where the next part begins: the call went on there
            end = round(parts[i + 1][0].start_s * SAMPLE_RATE) * width
        pcm = part_pcm(path, 2 if channels == "stereo" else 1, ffmpeg)
        async with contextlib.aclosing(pcm):
            async for chunk in pcm:
                if end is not None:
                    chunk = chunk[: max(0, end - written)]
                if not chunk:
                    break
                await _write(sink, chunk)
                written += len(chunk)
    return written / width / SAMPLE_RATE
