"""The caller's RTP played out on the call's clock: a timestamp jitter buffer, sans-I/O.

Theory of operation
-------------------
The agent core must hear one 20 ms frame every 20 ms of the call, whatever
the network does, and no later than the network makes necessary. Packets
carry their place in time (the RTP timestamp); the worker's pacer asks for a
frame every 20 ms (:meth:`PlayoutBuffer.pull`). Between the two sits the
playout pointer, the timestamp of the next sample to hear, as pjmedia's jbuf
and WebRTC's NetEq keep one:

* :meth:`PlayoutBuffer.push` files a packet under its (extended) timestamp.
  One whose time has been played already is late: dropped, counted, and
  its lateness still measured. Duplicates are dropped. A timestamp further
  than ``MAX_JUMP`` from the pointer is a new timeline (the sender restarted
  its clock): the buffer starts again there.
* Each packet's transit (arrival in clock ticks minus timestamp) is set
  against the network's best case, the base: the lowest transit of the last
  ``BASE_WINDOW`` packets (a second), so that it follows a caller whose
  clock runs slow or fast, and a path whose delay steps up. A packet that
  comes after its time while the buffer plays silence (a talkspurt delayed
  more than the last one, the packets a NAT probation held) is not late:
  nothing of its time was heard, so the base starts again from it and the
  talkspurt plays. How far above the base a packet arrives is its
  lateness; the 95th percentile of the last ``WINDOW`` packets' lateness is
  the jitter the buffer must absorb. The
  target delay is that plus a small margin, between 20 ms and
  ``max_delay_ms`` (200 ms by default); it grows at once and shrinks by at
  most 5 ms each update, so a burst of jitter is not forgotten in a second.
* The delay being played now is ``now - (pointer + base)``: how much later
  than its best-case arrival the sample at the pointer is heard.
* :meth:`pull` builds one frame from the pointer on: decoded packets in
  timestamp order (the codec's state sees them in order), and wherever no
  packet covers the time, concealment (:class:`~telephony_edge.audio.conceal.Concealer`:
  the last pitch period repeated and fading for up to 60 ms), then silence
  or comfort noise at the caller's RFC 3389 level. A loss therefore costs
  its own 20 ms and never delays the packets after it.
* The delay follows the target two ways. At a talkspurt's start (packets
  arrive while the buffer plays silence) the pointer jumps so the delay is
  the target: silence absorbs it. In continuous speech, a delay more than a
  frame above the target drops a quiet frame, and one below the target adds a
  frame in silence or concealment: so clock drift between the caller and the
  worker is absorbed where it cannot be heard. Past ``max_delay_ms`` (a path
  whose delay jumped in the middle of speech) frames are dropped whatever
  they hold: the bound is kept.
* After a stall of the worker (no pull for the pacer's ``skipped`` ticks),
  :meth:`PlayoutBuffer.skip` drops that much: the caller's audio of the
  stalled time would otherwise keep the agent that late until a pause.

Sans-I/O: ``now`` comes in; the decoder is the leg's, one per call.
"""

from __future__ import annotations

import audioop
import random
import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from telephony_edge.audio.conceal import Concealer
from telephony_edge.audio.frames import FRAME_BYTES, SILENCE_FRAME

TICKS_PER_FRAME = 160  # 20 ms of RTP clock: 8000 Hz for G.711 and, by RFC 3551, G.722
PCM_BYTES_PER_TICK = FRAME_BYTES // TICKS_PER_FRAME  # canonical 16 kHz PCM16: 2 samples a tick
START_DELAY_TICKS = 320  # 40 ms until the stream has shown its jitter
MIN_DELAY_TICKS = 160  # 20 ms: a packet must be in before the pacer's tick that needs it
MARGIN_TICKS = 40  # 5 ms above the measured jitter
SHRINK_STEP_TICKS = 40  # the target falls by at most 5 ms an update
WINDOW = 250  # packets of transit history (5 s at 20 ms)
UPDATE_EVERY = 25  # packets between target updates
QUANTILE = 0.95
BASE_WINDOW = 50  # packets the best-case transit is the lowest of
MAX_JUMP = 8000 * 4  # 4 s: a timestamp further from the pointer is a new timeline
MAX_PENDING = 64  # packets filed ahead of the pointer (1.3 s at 20 ms)
QUIET_RMS = 200  # a frame this quiet may be dropped or repeated to move the delay
MASK = 0xFFFFFFFF


class Decoder(Protocol):
    def decode(self, payload: bytes) -> bytes: ...


@dataclass(slots=True)
class PlayoutStats:
    """What the buffer did, for ``voip.media`` and the metrics (frames are 20 ms)."""

    frames: int = 0  # pulled
    decoded: int = 0  # packets played (a quiet one dropped for the delay is played too)
    late: int = 0  # packets that came after their time was played
    duplicates: int = 0
    overflow: int = 0  # packets refused with MAX_PENDING filed
    resyncs: int = 0  # new timelines (the sender's timestamps jumped, a new SSRC)
    concealed_ticks: int = 0  # filled by waveform repetition
    silence_ticks: int = 0  # filled with silence or comfort noise
    dropped_frames: int = 0  # quiet frames dropped to bring the delay down
    inserted_frames: int = 0  # frames added in silence to bring it up
    target_ticks: int = START_DELAY_TICKS
    delay_ticks: int = 0  # the delay of the last frame played
    max_delay_ticks: int = 0
    delay_sum_ticks: int = 0  # over the frames that carried audio, for the mean
    audio_frames: int = 0


class PlayoutBuffer:
    """One call's caller audio, from packets to frames on the clock; see the module docstring."""

    __slots__ = (
        "_concealer",
        "_decoder",
        "_decoder_for",
        "_last",
        "_lateness",
        "_measured",
        "_noise_level",
        "_pcm",
        "_pending",
        "_recent",
        "_silent",
        "_since_update",
        "clock_rate",
        "max_delay_ticks",
        "pointer",
        "stats",
    )

    def __init__(
        self,
        decoder_for: Callable[[int], Decoder],
        *,
        clock_rate: int = 8000,
        max_delay_ms: int = 200,
    ) -> None:
        self._decoder_for = decoder_for  # by the first payload's size
        self._decoder: Decoder | None = None
        self.clock_rate = clock_rate
        self.max_delay_ticks = max(MIN_DELAY_TICKS, max_delay_ms * clock_rate // 1000)
        self.stats = PlayoutStats(target_ticks=min(START_DELAY_TICKS, self.max_delay_ticks))
        self.pointer: int | None = None  # extended timestamp of the next sample to play
        self._pending: dict[int, bytes] = {}  # extended timestamp → payload
        self._pcm = b""  # decoded audio from the pointer on (the rest of a long packet)
        self._lateness: deque[int] = deque(maxlen=WINDOW)
        self._recent: deque[tuple[int, int]] = deque()  # (count, transit), rising: a window min
        self._measured = 0  # packets measured
        self._since_update = 0
        self._concealer = Concealer()
        self._silent = True  # the last frame was silence: the pointer may move freely
        self._last = SILENCE_FRAME  # the last frame pulled
        self._noise_level: int | None = None  # RFC 3389 level (-dBov), while CN was heard

    # -- packets in --------------------------------------------------------------------------

    def push(self, timestamp: int, payload: bytes, now: float) -> None:
        """An audio packet of the peer's stream, arrived at ``now``."""
        stats = self.stats
        arrival = int(now * self.clock_rate)
        if self.pointer is None:
            self._start(timestamp, arrival)
        pointer = self.pointer
        assert pointer is not None
        delta = (timestamp - pointer) & MASK  # extended: the nearest to the pointer
        ext = pointer + (delta - 0x100000000 if delta >= 0x80000000 else delta)
        if abs(ext - pointer) > MAX_JUMP:
            stats.resyncs += 1
            self._start(timestamp, arrival)
            ext = timestamp
        elif ext < pointer:
            if not (self._silent and not self._pending and not self._pcm):
                stats.late += 1
                self._measure(arrival - ext)
                return
            self._recent.clear()  # heard as silence: a delay that stepped up, a new base
        if ext in self._pending:
            stats.duplicates += 1
            return
        if len(self._pending) >= MAX_PENDING:
            stats.overflow += 1
            return
        self._pending[ext] = payload
        self._noise_level = None
        self._measure(arrival - ext)

    def comfort_noise(self, level: int) -> None:
        """An RFC 3389 CN packet: silence from now on is noise at ``-level`` dBov."""
        self._noise_level = min(127, max(0, level))

    def new_timeline(self) -> None:
        """A new SSRC: its timestamps have nothing to do with the old ones."""
        if self.pointer is not None:
            self.stats.resyncs += 1
            self.pointer = None
            self._pending.clear()
            self._pcm = b""

    def _start(self, timestamp: int, arrival: int) -> None:
        """The first packet of a timeline: played ``target`` from now."""
        self.pointer = timestamp - self.stats.target_ticks
        self._pending.clear()
        self._pcm = b""
        self._lateness.clear()
        self._recent.clear()
        self._silent = True

    def _measure(self, transit: int) -> None:
        recent = self._recent
        self._measured = count = self._measured + 1
        while recent and recent[-1][1] >= transit:
            recent.pop()
        recent.append((count, transit))
        if recent[0][0] <= count - BASE_WINDOW:
            recent.popleft()
        self._lateness.append(transit - recent[0][1])
        self._since_update += 1
        if self._since_update >= UPDATE_EVERY:
            self._since_update = 0
            self._update_target()

    def _update_target(self) -> None:
        lateness = sorted(self._lateness)
        jitter = lateness[int(QUANTILE * (len(lateness) - 1))]
        wanted = min(self.max_delay_ticks, max(MIN_DELAY_TICKS, jitter + MARGIN_TICKS))
        stats = self.stats
        if wanted < stats.target_ticks:
            wanted = max(wanted, stats.target_ticks - SHRINK_STEP_TICKS)
        stats.target_ticks = wanted

    # -- frames out -------------------------------------------------------------------------

    def pull(self, now: float) -> bytes | None:
        """The next 20 ms frame (canonical PCM16 16 kHz); None before the first packet."""
        if self.pointer is None:
            return None
        stats = self.stats
        stats.frames += 1
        delay = int(now * self.clock_rate) - self.pointer - self._base()
        target = stats.target_ticks
        if self._silent and self._pending and self._pcm == b"":
            # a talkspurt starts while silence plays: meet the target by moving the pointer,
            # in whole frames before the first packet so that frames stay packets
            first = min(self._pending)
            ahead = max(0, round((first - self.pointer - delay + target) / TICKS_PER_FRAME))
            moved = first - ahead * TICKS_PER_FRAME
            delay -= moved - self.pointer
            self.pointer = moved
        elif delay < target - MARGIN_TICKS and (
            self._silent or audioop.rms(self._last, 2) < QUIET_RMS
        ):
            stats.inserted_frames += 1  # below the target in a quiet moment: one frame more
            self._last = frame = SILENCE_FRAME
            return frame
        while delay > self.max_delay_ticks + TICKS_PER_FRAME:  # past the bound: skip, heard
            self._frame()
            stats.dropped_frames += 1
            delay -= TICKS_PER_FRAME
        frame = self._frame()
        if delay >= target + TICKS_PER_FRAME - MARGIN_TICKS and audioop.rms(frame, 2) < QUIET_RMS:
            stats.dropped_frames += 1  # above the target: a quiet frame goes
            delay -= TICKS_PER_FRAME
            frame = self._frame()
        self._last = frame
        if not self._silent:
            stats.audio_frames += 1
            stats.delay_sum_ticks += delay
            stats.delay_ticks = delay
            if delay > stats.max_delay_ticks:
                stats.max_delay_ticks = delay
        return frame

    def skip(self, frames: int) -> None:
        """The worker stalled for ``frames`` ticks: that much of the caller's audio is stale
        (played now, it would keep the agent that late for the rest of the call)."""
        if self.pointer is None:
            return
        for _ in range(frames):
            self._frame()
        self.stats.dropped_frames += frames

    def _frame(self) -> bytes:
        """One frame from the pointer on, the pointer moved past it."""
        if not self._pcm:  # the common case: the 20 ms packet at the pointer is the frame
            pointer = self.pointer
            assert pointer is not None
            payload = self._pending.pop(pointer, None)
            if payload is not None:
                pcm = self._decode(payload)
                if len(pcm) == FRAME_BYTES:
                    self.pointer = pointer + TICKS_PER_FRAME
                    self._silent = False
                    return pcm
                self._pcm = pcm
        parts: list[bytes] = []
        need = TICKS_PER_FRAME
        heard = False
        while need:
            pointer = self.pointer
            assert pointer is not None
            if self._pcm:
                take = self._pcm[: need * PCM_BYTES_PER_TICK]
                self._pcm = self._pcm[len(take) :]
                ticks = len(take) // PCM_BYTES_PER_TICK
                parts.append(take)
                heard = True
            else:
                payload = self._pending.pop(pointer, None)
                if payload is not None:
                    self._pcm = self._decode(payload)
                    continue
                ticks = self._gap(pointer, need)
                parts.append(self._fill(ticks))
            self.pointer = pointer + ticks
            need -= ticks
        frame = parts[0] if len(parts) == 1 else b"".join(parts)
        self._silent = not heard and self._concealer.exhausted
        return frame

    def _gap(self, pointer: int, need: int) -> int:
        """Ticks from the pointer that no packet covers (at most ``need``); a packet that
        began before the pointer (after a dropped frame, or odd packet sizes) is cut."""
        if not self._pending:
            return need
        first = min(self._pending)
        if first < pointer:
            payload = self._pending.pop(first)
            pcm = self._decode(payload)[(pointer - first) * PCM_BYTES_PER_TICK :]
            self._pcm = pcm
            return 0 if pcm else self._gap(pointer, need)
        return min(need, first - pointer)

    def _decode(self, payload: bytes) -> bytes:
        self.stats.decoded += 1
        decoder = self._decoder
        if decoder is None:
            decoder = self._decoder = self._decoder_for(len(payload))
        return self._concealer.heard(decoder.decode(payload))

    def _fill(self, ticks: int) -> bytes:
        """``ticks`` no packet covers: concealment while it can, then silence or noise."""
        if ticks == 0:
            return b""
        stats = self.stats
        if not self._concealer.exhausted:
            stats.concealed_ticks += ticks
            return self._concealer.conceal(ticks * PCM_BYTES_PER_TICK // 2)
        stats.silence_ticks += ticks
        level = self._noise_level
        if level is None or level >= 90:
            return SILENCE_FRAME if ticks == TICKS_PER_FRAME else bytes(ticks * PCM_BYTES_PER_TICK)
        return comfort_noise(ticks * PCM_BYTES_PER_TICK, level)

    def _base(self) -> int:
        """The network's best-case transit lately (ticks)."""
        return self._recent[0][1] if self._recent else 0

    @property
    def target_ms(self) -> float:
        return self.stats.target_ticks * 1000 / self.clock_rate


_RANDOM = random.Random(3389)
_NOISE = struct.pack("<16000h", *(int(_RANDOM.uniform(-16000, 16000)) for _ in range(16000)))
_NOISE_RMS = audioop.rms(_NOISE, 2)


def comfort_noise(size: int, level: int) -> bytes:
    """``size`` bytes (at most 1 s) of white noise at ``-level`` dBov (RFC 3389 §3.1: 0 dBov
    is a full-scale square wave, so 32767 RMS), from a random place in a prepared second."""
    start = 2 * _RANDOM.randrange((len(_NOISE) - size) // 2 + 1)
    rms = 32767 * 10 ** (-level / 20)
    return audioop.mul(_NOISE[start : start + size], 2, rms / _NOISE_RMS)
