"""The recordings of one worker: started with a call, finished with it, stored, linked.

A :class:`CallRecording` is the bridge's tap (``caller``/``agent`` per
frame) plus a task that flushes it about once a second into its sink: a WAV
file, or an ffmpeg process that encodes mp3/ogg as the call goes
(``encoder.py``). Its file is claimed on the spool (``spool.py``), within
the spool's bound. At the call's end :meth:`Recordings.finish` closes the
sink (ffmpeg finishes the file), then, in a task of its own, hashes the
file and stores it: local storage keeps it where it is and signs the edge's
link; S3 storage hands it to the upload queue (``uploads.py``: retried with
back-off until stored) and presigns the store's. The end-of-call webhook
waits for that, at most ``finish_timeout_s``, so the URL it carries works
when it arrives; an upload still failing by then goes on (the payload says
nothing of the recording, counted ``late``), across a restart of the worker
too.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
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
from telephony_edge.audio.frames import FRAME_MS, SAMPLE_RATE, SAMPLE_WIDTH
from telephony_edge.calls.dispatcher import RetryPolicy
from telephony_edge.config import RecordingOptions, RecordingSettings, Settings
from telephony_edge.recording import joiner, signing
from telephony_edge.recording.encoder import CODECS, EncoderFailed, FfmpegEncoder
from telephony_edge.recording.joiner import Part, Timeline
from telephony_edge.recording.spool import Claim, Spool
from telephony_edge.recording.storage import LocalStorage, S3Storage, Storage
from telephony_edge.recording.uploads import UploadQueue
from telephony_edge.recording.writer import TrackWriter, WavFile

log = logging.getLogger(__name__)

#: call ids are the edge's own (``call_…``): anything else never names a file
CALL_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
#: finished recordings remembered for a late end-of-call report (a coordinator outage)
MAX_REMEMBERED = 1000
#: how long a recording let go here may be taken back by its call ending here (the network's
#: final status comes within seconds of its socket's end)
TAKE_BACK_S = 60.0
#: a recording starts only if this much of it fits in the spool (as PCM: compressed is less)
HEADROOM_S = 10
#: a spool file written this recently may still be a dead worker's ffmpeg's: adopted later
ADOPT_QUIET_S = 5.0
#: how long a moved call's end waits for an earlier part its worker still holds (finishing it)
PART_WAIT_S = 10.0
#: how long a worker stopping waits for the next worker to claim a part it let go
LEFT_WAIT_S = 3.0


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
    parts: list[dict[str, Any]] | None = None
    """A moved call's: each worker's part, in order, whether it is in this recording."""

    def payload(self) -> dict[str, Any]:
        """The end-of-call payload's ``recording`` (``parts`` only for a call that moved)."""
        found = asdict(self)
        if self.parts is None:
            del found["parts"]
        return found


@dataclass(frozen=True, slots=True)
class Continued:
    """A call taken over here: its generation, its live state's ``recording`` entry, and
    how long ago it began."""

    generation: int
    live: Mapping[str, Any] | None
    elapsed_s: float


class CallRecording:
    """One call's recording while it runs: ``writer`` is the bridge's tap, flushed each second."""

    def __init__(
        self,
        call_id: str,
        claim: Claim,
        fmt: str,
        options: RecordingOptions,
        sink: WavFile | FfmpegEncoder,
        spool: Spool,
        *,
        flush_interval_s: float,
        clock: Callable[[], float],
        timeline: Timeline,
    ) -> None:
        self.call_id = call_id
        self.claim = claim
        self.format = fmt
        self.options = options
        self.timeline = timeline
        self.encoder = sink if isinstance(sink, FfmpegEncoder) else None
        self.writer = TrackWriter(sink, options.channels, clock=clock)
        self._spool = spool
        self._lock = asyncio.Lock()
        self._started = None if self.encoder is None else asyncio.create_task(self.encoder.start())
        self._flusher = asyncio.create_task(self._flush_every(flush_interval_s))
        self.earlier: dict[str, Claim | None] = {}
        """The earlier parts' claims (None: not claimed yet, or not on this spool)."""
        self.missing: set[str] = set()
        """Earlier parts not on this spool (another node's): not joined."""
        self.claim_earlier()

    def live_state(self) -> dict[str, Any]:
        """The recording's entry in the call's live state: changes only with a new part."""
        return self.timeline.live_state()

    def waiting_for_earlier(self) -> bool:
        """Whether an earlier part is on this spool but another process still holds it."""
        return any(
            self.earlier.get(part.file) is None and part.file not in self.missing
            for part in self.timeline.parts[:-1]
        )

    def claim_earlier(self) -> None:
        """Claim the earlier parts not claimed yet, so that no sweep uploads them alone."""
        for part in self.timeline.parts[:-1]:
            if self.earlier.get(part.file) is not None or part.file in self.missing:
                continue
            if not joiner.is_part_of(self.call_id, part.file):
                log.error("recording: %r is no part of this call", part.file)
                self.missing.add(part.file)
                continue
            try:
                self.earlier[part.file] = self._spool.claim(part.file)
            except FileNotFoundError:
                self.missing.add(part.file)
                log.warning(
                    "recording: the part %s of worker %s is not on this spool: not joined",
                    part.file,
                    part.worker,
                    extra={"call_id": self.call_id},
                )
            except OSError as exc:  # tried again at the next flush
                log.warning(
                    "recording: part %s not claimed: %r",
                    part.file,
                    exc,
                    extra={"call_id": self.call_id},
                )

    async def _flush_every(self, interval: float) -> None:
        while not self.writer.closed:
            await asyncio.sleep(interval)
            await self.flush()

    async def flush(self) -> None:
        """Catch the file up with the call's clock (the flush task's step, each second)."""
        self.claim_earlier()  # an earlier part its worker was still finishing, if any
        async with self._lock:
            if self.writer.closed:
                return
            try:
                if self._started is not None:
                    await asyncio.shield(self._started)
                self.writer.flush()
                if self.encoder is not None:
                    await self.encoder.drain()  # bounded: the pipe takes the next second
            except (OSError, EncoderFailed) as exc:  # disk full, ffmpeg gone: unrecorded from here
                log.error("recording stopped: %s", exc, extra={"call_id": self.call_id})
                self._stop_writing()
                return
            if not self._spool.grow(self.claim, os.fstat(self.claim.fd).st_size):
                log.error(
                    "recording stopped: the spool is full (%d of %d bytes)",
                    self._spool.used_bytes,
                    self._spool.max_bytes,
                    extra={"call_id": self.call_id},
                )
                metrics.RECORDING_SPOOL_FULL.labels(action="truncated").inc()
                self._stop_writing()

    def _stop_writing(self) -> None:
        with contextlib.suppress(OSError):
            self.writer.close()

    async def stop(self) -> float:
        """Stop writing and finish the file (ffmpeg's last frames); its duration in seconds.

        Raises what kept the file from being finished (OSError, :class:`EncoderFailed`).
        """
        self._flusher.cancel()
        await asyncio.gather(self._flusher, return_exceptions=True)
        async with self._lock:
            if self._started is not None:
                await self._started
            self.writer.close()
            if self.encoder is not None:
                await self.encoder.wait()
        self._spool.grow(self.claim, os.fstat(self.claim.fd).st_size)
        if self.writer.dropped:
            log.warning(
                "recording: %d frames dropped (a track ran ahead, or the file fell behind)",
                self.writer.dropped,
                extra={"call_id": self.call_id},
            )
        return self.writer.frames_written * FRAME_MS / 1000


class Recordings:
    """The worker's recordings: start, finish, link, sweep."""

    def __init__(
        self,
        settings: RecordingSettings,
        *,
        public_url: str,
        secret: str | None,
        worker_id: str = "",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.worker_id = worker_id
        self.directory = Path(settings.directory)
        self.public_url = public_url
        """The base of the links to recordings kept here (``settings.public_url``)."""
        self._secret = settings.url_secret or secret
        self._clock = clock
        self._ffmpeg = shutil.which("ffmpeg")
        self.spool = Spool(self.directory, settings.spool_max_bytes)
        self.local = LocalStorage(self.directory)
        self.storage: Storage = self.local
        self._s3: S3Storage | None = None
        self.uploads: UploadQueue | None = None
        if settings.storage == "s3" and settings.s3 is not None:
            self.storage = self._s3 = S3Storage(settings.s3, self.directory, settings.url_ttl_s)
            retry = RetryPolicy(
                base_delay=settings.upload_backoff_s, max_delay=settings.upload_backoff_max_s
            )
            self.uploads = UploadQueue(self._s3, self.spool, retry)
        self._live: dict[str, CallRecording] = {}
        self._finishing: set[asyncio.Task[Any]] = set()  # results, and parts' uploads
        self._done: OrderedDict[str, RecordedFile] = OrderedDict()
        self._left: set[str] = set()  # parts let go for the call's next worker to join
        # what was let go, and its stop: taken back if the call ends here after all
        self._let_go: OrderedDict[str, tuple[float, CallRecording, asyncio.Future[None]]]
        self._let_go = OrderedDict()

    @property
    def secret(self) -> str | None:
        return self._secret

    def start(
        self, call_id: str, options: RecordingOptions, continued: Continued | None = None
    ) -> CallRecording | None:
        """Start recording ``call_id`` now; None (logged) if its file cannot be had.

        ``continued``: the call was taken over: this is its next part (:mod:`.joiner`).
        """
        if not CALL_ID.match(call_id):
            log.error("call not recorded: its id cannot name a file", extra={"call_id": call_id})
            return None
        fmt, ffmpeg = options.format, self._ffmpeg
        if fmt in CODECS and ffmpeg is None:
            log.warning(
                "ffmpeg is not installed: recorded as wav, not %s", fmt, extra={"call_id": call_id}
            )
            fmt = "wav"
        headroom = (
            HEADROOM_S * SAMPLE_RATE * SAMPLE_WIDTH * (2 if options.channels == "stereo" else 1)
        )
        try:
            name = joiner.part_name(call_id, continued.generation if continued else 0, fmt)
            claim = self.spool.create(name, headroom)
        except OSError as exc:
            log.error("call not recorded: %s", exc, extra={"call_id": call_id})
            return None
        if claim is None:
            metrics.RECORDING_SPOOL_FULL.labels(action="refused").inc()
            log.error(
                "call not recorded: the spool is full (%d of %d bytes)",
                self.spool.used_bytes,
                self.spool.max_bytes,
                extra={"call_id": call_id},
            )
            return None
        try:
            sink = (
                WavFile(claim.path, options.channels)
                if ffmpeg is None or fmt == "wav"
                else FfmpegEncoder(ffmpeg, claim.path, fmt, options.channels)
            )
        except OSError as exc:
            self.spool.release(claim, delete=True)
            log.error("call not recorded: %s", exc, extra={"call_id": call_id})
            return None
        recording = CallRecording(
            call_id,
            claim,
            fmt,
            options,
            sink,
            self.spool,
            flush_interval_s=self.settings.flush_interval_s,
            clock=self._clock,
            timeline=(
                Timeline.first(call_id, fmt, self.worker_id, time.time())
                if continued is None
                else Timeline.resumed(
                    continued.live,
                    name,
                    self.worker_id,
                    now=time.time(),
                    elapsed_s=continued.elapsed_s,
                )
            ),
        )
        self._live[call_id] = recording
        return recording

    def live_state(self, call_id: str) -> dict[str, Any] | None:
        """``call_id``'s recording entry for its live state (None: not recorded here)."""
        recording = self._live.get(call_id)
        return None if recording is None else recording.live_state()

    async def let_go(self, call_id: str) -> None:
        """The call goes on on another worker: finish this worker's part and leave it, and
        the earlier parts it held, on the spool, for the worker that ends the call to join."""
        recording = self._live.pop(call_id, None)
        if recording is None:
            return
        leaving = asyncio.ensure_future(self._leave(recording))
        now = time.monotonic()
        while self._let_go and next(iter(self._let_go.values()))[0] < now - TAKE_BACK_S:
            self._let_go.popitem(last=False)
        self._let_go[call_id] = (now, recording, leaving)
        await leaving

    async def _leave(self, recording: CallRecording) -> None:
        try:
            await recording.stop()
        except Exception as exc:  # kept as written so far
            log.warning(
                "recording part not finished: %r", exc, extra={"call_id": recording.call_id}
            )
        finally:
            self.spool.release(recording.claim, delete=False)
            self._release_earlier(recording)
            # bounded by the spool: a part joined elsewhere, or uploaded, is gone from it
            self._left = {name for name in self._left if (self.directory / name).exists()}
            self._left.update(recording.earlier)
            self._left.add(recording.claim.path.name)
        log.info("recording part %s left for the call's next worker", recording.claim.path.name)

    def _release_earlier(self, recording: CallRecording, *, delete: bool = False) -> None:
        for claim in recording.earlier.values():
            if claim is not None:
                self.spool.release(claim, delete=delete)

    async def finish(self, call_id: str, *, keep: bool = False) -> dict[str, Any] | None:
        """Close ``call_id``'s recording and store it: the payload's ``recording`` object.

        Waits at most ``finish_timeout_s`` (the work goes on after that, the
        payload then says nothing of it). None if the call was not recorded.
        ``keep``: remember the result for a later report of the call's end
        (a coordinator outage deferred it); the next call without it takes it.
        """
        recording = self._live.pop(call_id, None) or await self._take_back(call_id)
        if recording is None:
            done = self._done.get(call_id) if keep else self._done.pop(call_id, None)
            return None if done is None else done.payload()
        task = asyncio.create_task(self._complete(recording))
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
        return result.payload()

    async def _take_back(self, call_id: str) -> CallRecording | None:
        """The recording this worker let go whose call ends here after all (a Vonage caller
        hangs up: the socket closes first, the call is handed off, and then the network
        says ``completed``): whole again, unless another worker took its part on."""
        left = self._let_go.pop(call_id, None)
        if left is None or left[0] < time.monotonic() - TAKE_BACK_S:
            return None
        _, recording, leaving = left
        await asyncio.wait({leaving})
        name = recording.claim.path.name
        try:
            claim = self.spool.claim(name)
        except OSError:  # gone: taken on, joined or uploaded elsewhere
            return None
        if claim is None:  # held by the call's next worker
            return None
        self._left.discard(name)
        self._left.difference_update(recording.earlier)
        recording.claim, recording.earlier, recording.missing = claim, {}, set()
        recording.claim_earlier()
        return recording

    async def _complete(self, recording: CallRecording) -> RecordedFile:
        claim, call_id = recording.claim, recording.call_id
        parts = None
        try:
            duration = await recording.stop()
            if len(recording.timeline.parts) > 1:
                claim, duration, parts = await self._join(recording)
            size, digest = await asyncio.to_thread(_size_and_sha256, claim.path)
        except BaseException:
            # kept as it is (served here, or uploaded by the next sweep), unless nothing is in it
            self.spool.release(claim, delete=os.fstat(claim.fd).st_size == 0)
            self._release_earlier(recording)
            raise
        if self.uploads is None or self._s3 is None:
            self.spool.release(claim, delete=False)
            url = self.link(call_id)
        else:
            upload = self.uploads.submit(claim)
            await asyncio.wait({upload})  # (its cancellation, a worker stopping, is not ours)
            if upload.cancelled():
                raise RuntimeError("the worker stopped first: the next start uploads it")
            if not upload.result():
                raise RuntimeError("deleted by the retention sweep before it was uploaded")
            url = await self._s3.url(claim.path.name)
        channels = recording.options.channels
        if parts is not None and self._s3 is not None:
            for part in parts:
                if not part["joined"]:  # its node's spool uploads it under its own name
                    part["url"] = await self._s3.url(part["file"])
        return RecordedFile(url, recording.format, channels, duration, size, digest, parts)

    async def _join(self, recording: CallRecording) -> tuple[Claim, float, list[dict[str, Any]]]:
        """A moved call's parts joined into one file (:mod:`.joiner`): its claim, duration,
        and the parts as the payload lists them. The joined parts are deleted."""
        deadline = time.monotonic() + PART_WAIT_S
        while recording.waiting_for_earlier() and time.monotonic() < deadline:
            await asyncio.sleep(0.2)  # its worker is finishing it (a drain)
            recording.claim_earlier()
        own = recording.claim
        found: list[tuple[Part, Path | None]] = []
        for part in recording.timeline.parts[:-1]:
            held = recording.earlier.get(part.file)
            found.append((part, None if held is None else held.path))
            metrics.RECORDING_PARTS.labels(outcome="missing" if held is None else "joined").inc()
        found.append((recording.timeline.parts[-1], own.path))
        headroom = own.size + sum(c.size for c in recording.earlier.values() if c is not None)
        whole = self.spool.create(joiner.whole_name(recording.call_id, recording.format), headroom)
        if whole is None:
            metrics.RECORDING_SPOOL_FULL.labels(action="refused").inc()
            raise OSError("the spool is full: the parts are left for the sweep to upload")
        channels = recording.options.channels
        try:
            sink = (
                WavFile(whole.path, channels)
                if recording.encoder is None or self._ffmpeg is None
                else FfmpegEncoder(self._ffmpeg, whole.path, recording.format, channels)
            )
            if isinstance(sink, FfmpegEncoder):
                await sink.start()
            try:
                duration = await joiner.join(found, sink, channels, self._ffmpeg)
            finally:
                sink.close()
            if isinstance(sink, FfmpegEncoder):
                await sink.wait()
        except BaseException:
            self.spool.release(whole, delete=True)
            raise
        self.spool.grow(whole, os.fstat(whole.fd).st_size)
        self.spool.release(own, delete=True)
        self._release_earlier(recording, delete=True)
        listed = [{**asdict(part), "joined": path is not None} for part, path in found]
        if any(path is None for _, path in found):
            log.warning(
                "recording joined without %d earlier part(s): silent there",
                sum(path is None for _, path in found),
                extra={"call_id": recording.call_id},
            )
        return whole, duration, listed

    def link(self, call_id: str) -> str | None:
        """The edge's signed link to a recording kept locally (None without a secret)."""
        if self._secret is None:
            log.warning(
                "recording has no link: set recording.url_secret", extra={"call_id": call_id}
            )
            return None
        query = signing.signed_query(self._secret, call_id, self.settings.url_ttl_s)
        return f"{self.public_url}/recordings/{call_id}?{query}"

    async def _upload_left_parts(self) -> None:
        """Before the worker exits, upload on its own each part it let go that no other
        worker claimed within :data:`LEFT_WAIT_S` (their spool is not this one: another
        node's, a pod's own volume, which goes with the pod): the call's end lists it."""
        if self.uploads is None:
            self._left.clear()
            return
        deadline = time.monotonic() + LEFT_WAIT_S
        while self._left:
            for name in sorted(self._left):
                try:
                    claim = self.spool.claim(name)
                except FileNotFoundError:  # joined and deleted already
                    claim = None
                if claim is None:  # the call's next worker holds it (or it is gone)
                    self._left.discard(name)
                elif time.monotonic() >= deadline:
                    self._left.discard(name)
                    log.warning("recording part %s taken by no other worker: uploaded alone", name)
                    task = self.uploads.submit(claim)
                    self._finishing.add(task)
                    task.add_done_callback(self._finishing.discard)
                else:
                    self.spool.release(claim, delete=False)  # not yet: look again
            if self._left:
                await asyncio.sleep(0.2)

    async def sweep_loop(self) -> None:
        """Every ``sweep_interval_s``: delete recordings past their retention; with S3, upload
        the spool's files that no process holds (this worker's before it restarted, a killed
        worker's sharing the directory)."""
        while True:
            cutoff = time.time() - self.settings.retention_s
            try:
                removed = await self.storage.sweep(cutoff)
            except Exception as exc:  # the store is away: the next sweep tries again
                log.warning("recordings not swept: %r", exc)
            else:
                if removed:
                    log.info("recordings past retention deleted: %d", removed)
            wait = self.settings.sweep_interval_s
            if self.uploads is not None:
                adopted, recent = self.spool.adopt(ADOPT_QUIET_S)
                for claim in adopted:
                    self.uploads.submit(claim)
                if adopted:
                    log.info("recordings no worker held, queued for upload: %d", len(adopted))
                if recent:  # a dead worker's ffmpeg may be finishing them: look again soon
                    wait = min(wait, ADOPT_QUIET_S)
            await asyncio.sleep(wait)

    async def close(self) -> None:
        """Finish what is left (a worker stopping) and let go of the store's client.

        Uploads still failing are left in the spool: the next start sends them.
        """
        for call_id in list(self._live):
            await self.finish(call_id)
        await self._upload_left_parts()
        if self._finishing:
            await asyncio.wait(set(self._finishing), timeout=self.settings.finish_timeout_s)
        if self.uploads is not None:
            await self.uploads.close()
        for task in list(self._finishing):
            task.cancel()
        await asyncio.gather(*self._finishing, return_exceptions=True)
        await self.storage.close()


def ffmpeg_formats(settings: Settings) -> Iterator[tuple[str, str]]:
    """``(where, format)`` for each configured recording format that only ffmpeg writes."""
    for agent_id, agent in settings.agents.items():
        if agent.recording is not None and agent.recording.format in CODECS:
            yield f"agents.{agent_id}.recording.format", agent.recording.format
    for number, route in settings.numbers.items():
        recording = route.agent_config.recording
        if recording is not None and recording.format in CODECS:
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
        f"ffmpeg is not installed, and {where}{more} asks for {fmt}: those calls "
        "are recorded as wav instead (install ffmpeg, or record wav)"
    )


def _size_and_sha256(path: Path) -> tuple[int, str]:
    with path.open("rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    return path.stat().st_size, digest
