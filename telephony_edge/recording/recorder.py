"""The recordings of one worker: started with a call, finished with it, stored, linked.

A :class:`CallRecording` is the bridge's tap (``caller``/``agent`` per frame)
plus a task that flushes the file about once a second. At the call's end
:meth:`Recordings.finish` closes the file, then (in a task of its own, off
the event loop where it blocks) converts it, hashes it, stores it and signs
its link: the end-of-call webhook waits for that, at most
``finish_timeout_s``, so the URL it carries works when it arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import shutil
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from telephony_edge import metrics
from telephony_edge.audio.frames import FRAME_MS
from telephony_edge.config import RecordingOptions, RecordingSettings, Settings
from telephony_edge.recording import signing
from telephony_edge.recording.storage import LocalStorage, S3Storage, Storage
from telephony_edge.recording.writer import TrackWriter

log = logging.getLogger(__name__)

#: call ids are the edge's own (``call_…``): anything else never names a file
CALL_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
#: finished recordings remembered for a late end-of-call report (a coordinator outage)
MAX_REMEMBERED = 1000
_CODECS = {"mp3": "libmp3lame", "ogg": "libvorbis"}


def recording_options(agent_config: Mapping[str, Any]) -> RecordingOptions | None:
    """The call's recording options if it is to be recorded (raises ValueError if malformed)."""
    spec = agent_config.get("recording")
    if spec is None:
        return None
    try:
        options = RecordingOptions.model_validate(spec)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'recording'}: {e['msg']}" for e in exc.errors()
        )
        raise ValueError(f"agent_config.recording: {problems}") from None
    return options if options.enabled else None


@dataclass(frozen=True, slots=True)
class RecordedFile:
    """A finished recording, as the end-of-call payload describes it."""

    url: str | None
    format: str
    channels: str
    duration_s: float
    size_bytes: int
    sha256: str


class CallRecording:
    """One call's recording while it runs: ``writer`` is the bridge's tap, flushed each second."""

    def __init__(
        self, call_id: str, path: Path, options: RecordingOptions, flush_interval_s: float
    ) -> None:
        self.call_id = call_id
        self.options = options
        self.writer = TrackWriter(path, options.channels)
        self._flusher = asyncio.create_task(self._flush_every(flush_interval_s))

    async def _flush_every(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                self.writer.flush()
            except OSError as exc:  # disk full: the call goes on, unrecorded from here
                log.error("recording stopped: %s", exc, extra={"call_id": self.call_id})
                with contextlib.suppress(OSError):
                    self.writer.close()
                return

    def stop(self) -> float:
        """Stop writing and close the file; its duration in seconds."""
        self._flusher.cancel()
        self.writer.close()
        if self.writer.dropped:
            log.warning(
                "recording: %d frames dropped (a track ran ahead)",
                self.writer.dropped,
                extra={"call_id": self.call_id},
            )
        return self.writer.frames_written * FRAME_MS / 1000


class Recordings:
    """The worker's recordings: start, finish, link, sweep."""

    def __init__(self, settings: RecordingSettings, *, public_url: str, secret: str | None) -> None:
        self.settings = settings
        self.directory = Path(settings.directory)
        self.public_url = public_url
        """The base of the links to recordings kept here (``settings.public_url``)."""
        self._secret = settings.url_secret or secret
        self.local = LocalStorage(self.directory)
        self.storage: Storage = self.local
        if settings.storage == "s3" and settings.s3 is not None:
            self.storage = S3Storage(settings.s3, self.directory, settings.url_ttl_s)
        self._live: dict[str, CallRecording] = {}
        self._finishing: set[asyncio.Task[RecordedFile]] = set()
        self._done: OrderedDict[str, RecordedFile] = OrderedDict()

    @property
    def secret(self) -> str | None:
        return self._secret

    def start(self, call_id: str, options: RecordingOptions) -> CallRecording | None:
        """Start recording ``call_id`` now; None (logged) if the file cannot be created."""
        if not CALL_ID.match(call_id):
            log.error("call not recorded: its id cannot name a file", extra={"call_id": call_id})
            return None
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            path = self.directory / f"{call_id}.wav"
            recording = CallRecording(call_id, path, options, self.settings.flush_interval_s)
        except OSError as exc:
            log.error("call not recorded: %s", exc, extra={"call_id": call_id})
            return None
        self._live[call_id] = recording
        return recording

    async def finish(self, call_id: str, *, keep: bool = False) -> dict[str, Any] | None:
        """Close ``call_id``'s recording and store it: the payload's ``recording`` object.

        Waits at most ``finish_timeout_s`` (the work goes on after that, the
        payload then says nothing of it). None if the call was not recorded.
        ``keep``: remember the result for a later report of the call's end
        (a coordinator outage deferred it); the next call without it takes it.
        """
        recording = self._live.pop(call_id, None)
        if recording is None:
            done = self._done.get(call_id) if keep else self._done.pop(call_id, None)
            return None if done is None else asdict(done)
        try:
            duration = recording.stop()
        except OSError as exc:
            log.error("recording not finished: %s", exc, extra={"call_id": call_id})
            metrics.RECORDINGS.labels(outcome="failed").inc()
            return None
        task = asyncio.create_task(self._complete(call_id, recording, duration))
        self._finishing.add(task)
        task.add_done_callback(self._finishing.discard)
        try:
            result = await asyncio.wait_for(asyncio.shield(task), self.settings.finish_timeout_s)
        except TimeoutError:
            log.warning("recording not ready in time for the webhook", extra={"call_id": call_id})
            metrics.RECORDINGS.labels(outcome="late").inc()
            return None
        except Exception as exc:
            log.error("recording not stored: %r", exc, extra={"call_id": call_id})
            metrics.RECORDINGS.labels(outcome="failed").inc()
            return None
        metrics.RECORDINGS.labels(outcome="stored").inc()
        if keep:
            self._done[call_id] = result
            while len(self._done) > MAX_REMEMBERED:
                self._done.popitem(last=False)
        return asdict(result)

    async def _complete(
        self, call_id: str, recording: CallRecording, duration: float
    ) -> RecordedFile:
        fmt, path = recording.options.format, recording.writer.path
        if fmt != "wav":
            path = await asyncio.to_thread(_convert, path, fmt)
        size, digest = await asyncio.to_thread(_size_and_sha256, path)
        url = await self.storage.put(call_id, path) or self.link(call_id)
        return RecordedFile(url, fmt, recording.options.channels, duration, size, digest)

    def link(self, call_id: str) -> str | None:
        """The edge's signed link to a recording kept locally (None without a secret)."""
        if self._secret is None:
            log.warning(
                "recording has no link: set recording.url_secret", extra={"call_id": call_id}
            )
            return None
        query = signing.signed_query(self._secret, call_id, self.settings.url_ttl_s)
        return f"{self.public_url}/recordings/{call_id}?{query}"

    async def sweep_loop(self) -> None:
        """Delete recordings past their retention, every ``sweep_interval_s``."""
        while True:
            cutoff = time.time() - self.settings.retention_s
            try:
                removed = await self.storage.sweep(cutoff)
            except Exception as exc:  # the store is away: the next sweep tries again
                log.warning("recordings not swept: %r", exc)
            else:
                if removed:
                    log.info("recordings past retention deleted: %d", removed)
            await asyncio.sleep(self.settings.sweep_interval_s)

    async def close(self) -> None:
        """Finish what is left (a worker stopping) and let go of the store's client."""
        for call_id in list(self._live):
            await self.finish(call_id)
        if self._finishing:
            await asyncio.wait(set(self._finishing), timeout=self.settings.finish_timeout_s)
        await self.storage.close()


def ffmpeg_formats(settings: Settings) -> Iterator[tuple[str, str]]:
    """``(where, format)`` for each configured recording format that only ffmpeg writes."""
    for agent_id, agent in settings.agents.items():
        if agent.recording is not None and agent.recording.format in _CODECS:
            yield f"agents.{agent_id}.recording.format", agent.recording.format
    for number, route in settings.numbers.items():
        recording = route.agent_config.recording
        if recording is not None and recording.format in _CODECS:
            yield f"numbers.{number}.agent_config.recording.format", recording.format


def ffmpeg_warning(
    settings: Settings, which: Callable[[str], str | None] | None = None
) -> str | None:
    """A warning if the configuration records in a format ffmpeg writes and there is none.

    Only then: WAV recordings, and an edge that records nothing, never need it.
    """
    needs = list(ffmpeg_formats(settings))
    if not needs or (which or shutil.which)("ffmpeg") is not None:
        return None
    where, fmt = needs[0]
    more = f" and {len(needs) - 1} more" if len(needs) > 1 else ""
    return (
        f"ffmpeg is not installed, and {where}{more} asks for {fmt}: those recordings "
        "will fail to convert (install ffmpeg, or record wav)"
    )


def _convert(wav: Path, fmt: str) -> Path:
    """``wav`` encoded as ``fmt`` next to it by ffmpeg (through pydub); the WAV is removed."""
    if shutil.which("ffmpeg") is None:
        raise RuntimeError(f"ffmpeg is not installed: cannot write {fmt}; the WAV is kept")
    from pydub import AudioSegment  # here: its import warns of a missing ffmpeg, for everyone

    out = wav.with_suffix(f".{fmt}")
    AudioSegment.from_wav(str(wav)).export(str(out), format=fmt, codec=_CODECS[fmt]).close()
    wav.unlink()
    return out


def _size_and_sha256(path: Path) -> tuple[int, str]:
    with path.open("rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    return path.stat().st_size, digest
