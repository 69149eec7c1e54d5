"""The edge's own answering-machine detector, for networks that have none (SIP, WebRTC).

Theory of operation
-------------------
The callee's first seconds of audio are measured frame by frame, as
Asterisk's ``app_amd`` does: a frame is *voice* when its level reaches the
silence threshold (``silence_threshold_dbfs``, raised above the line's own
noise floor when ``adaptive``: the demo core's
:class:`~telephony_edge.agent.vad.EnergyVad` judges it), and runs of voice
and silence are counted into words
(``min_word_length_ms`` of voice starts one, ``between_words_silence_ms``
of silence ends it). A person picks up and says something short ("Hello?")
then waits; a machine reads a long greeting. So:

* ``initial_silence_ms`` of silence before any word: **unknown** (``app_amd``
  says machine; a person who picks up and listens is more likely here, and
  hanging up on them is the worse mistake);
* ``greeting_ms`` of voice in all: **machine** (long greeting);
* more than ``maximum_words`` words: **machine** (too many words);
* one word of ``maximum_word_length_ms`` or longer: **machine** (long word);
* ``after_greeting_silence_ms`` of silence after the first words: **human**
  (they said hello and wait for an answer);
* ``total_analysis_time_ms`` without any of those: **unknown**.

After a **machine** verdict the detector goes on listening for the end of
the greeting, for whoever wants to leave a message: the beep
(:class:`~telephony_edge.amd.beep.BeepDetector`, run from the first frame so
a machine that beeps at once is caught too), ``message_end_silence_ms`` of
silence once the greeting has been heard, or ``max_message_wait_ms`` in all.
Then it is done; a **human** or **unknown** verdict ends it at once.

Rules: sans-I/O, no clock (time is frames fed times 20 ms), one level per
frame plus one small matrix product while the beep is looked for: some
microseconds per frame (``bench/amd_accuracy.py`` measures it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from telephony_edge.agent.vad import EnergyVad, VadConfig, frame_dbfs
from telephony_edge.amd.beep import BeepDetector, BeepParams
from telephony_edge.audio.frames import FRAME_MS

Result = Literal["human", "machine", "unknown"]


@dataclass(frozen=True, slots=True)
class DetectorParams:
    """Knobs of :class:`AmdDetector`: Asterisk ``app_amd``'s, in milliseconds, plus the beep's."""

    initial_silence_ms: int = 2500
    greeting_ms: int = 1500
    after_greeting_silence_ms: int = 800
    total_analysis_time_ms: int = 5000
    min_word_length_ms: int = 100
    between_words_silence_ms: int = 50
    maximum_words: int = 3
    maximum_word_length_ms: int = 5000
    silence_threshold_dbfs: float = -38.0
    """Quieter frames are silence."""
    adaptive: bool = True
    """Raise the threshold to 10 dB above the line's noise floor (a noisy line)."""
    message_end_silence_ms: int = 3000
    max_message_wait_ms: int = 60_000
    beep: BeepParams = field(default_factory=BeepParams)

    def __post_init__(self) -> None:
        for name in (
            "initial_silence_ms",
            "greeting_ms",
            "after_greeting_silence_ms",
            "total_analysis_time_ms",
            "min_word_length_ms",
            "between_words_silence_ms",
            "maximum_word_length_ms",
            "message_end_silence_ms",
            "max_message_wait_ms",
        ):
            value = getattr(self, name)
            if not FRAME_MS <= value <= 120_000:
                raise ValueError(f"{name} must be between {FRAME_MS} and 120000 ms")
        if self.maximum_words < 1:
            raise ValueError("maximum_words must be >= 1")
        if not -90.0 <= self.silence_threshold_dbfs <= 0.0:
            raise ValueError("silence_threshold_dbfs must be between -90 and 0")


@dataclass(frozen=True, slots=True)
class Verdict:
    """Who answered, why (``app_amd``'s cause), and after how much audio."""

    result: Result
    reason: str
    after_ms: int


@dataclass(frozen=True, slots=True)
class MessageEnd:
    """A machine's greeting is over (``beep``: it ended with one): leave the message now."""

    beep: bool
    after_ms: int


Finding = Verdict | MessageEnd


class AmdDetector:
    """Feed the callee's canonical frames from the answer on; see the module docstring."""

    def __init__(self, params: DetectorParams = DetectorParams()) -> None:
        self.params = params
        self.verdict: Verdict | None = None
        self.done = False
        self._beep = BeepDetector(params.beep)
        self._level = EnergyVad(
            VadConfig(threshold_dbfs=params.silence_threshold_dbfs, adaptive=params.adaptive)
        )
        self._ms = 0
        self._voice_ms = 0  # all voice so far
        self._word_ms = 0  # voice in a row
        self._silence_ms = 0  # silence in a row
        self._words = 0
        self._in_word = False
        self._in_greeting = False

    def feed(self, frame: bytes) -> list[Finding]:
        """One 20 ms frame in; what it decided out (empty most of the time)."""
        if self.done:
            return []
        self._ms += FRAME_MS
        found: list[Finding] = []
        beep = self._beep.feed(frame)
        self._level.feed(frame)  # (its utterances are not used: only its threshold)
        voice = frame_dbfs(frame) >= self._level.threshold_dbfs
        if self.verdict is None:
            verdict = self._analyse(voice)
            if verdict is None and beep is not None:
                verdict = Verdict("machine", "beep", self._ms)
            if verdict is not None:
                self.verdict = verdict
                found.append(verdict)
                self.done = verdict.result != "machine"
        elif not voice:
            self._silence_ms += FRAME_MS
        else:
            self._silence_ms = 0
        if self.verdict is not None and self.verdict.result == "machine" and not self.done:
            end = self._message_end(beep is not None)
            if end is not None:
                found.append(end)
                self.done = True
        return found

    def _message_end(self, beep: bool) -> MessageEnd | None:
        params = self.params
        if beep:
            return MessageEnd(True, self._ms)
        if self._silence_ms >= params.message_end_silence_ms or self._ms >= (
            params.max_message_wait_ms
        ):
            return MessageEnd(False, self._ms)
        return None

    def _analyse(self, voice: bool) -> Verdict | None:
        """``app_amd``'s per-frame rules; a verdict or None (go on)."""
        params, ms = self.params, self._ms
        if not voice:
            self._silence_ms += FRAME_MS
            self._word_ms = 0
            if self._in_word and self._silence_ms >= params.between_words_silence_ms:
                self._in_word = False
            if not self._in_greeting and self._silence_ms >= params.initial_silence_ms:
                return Verdict("unknown", "initial-silence", ms)
            if self._in_greeting and self._silence_ms >= params.after_greeting_silence_ms:
                return Verdict("human", "after-greeting-silence", ms)
        else:
            self._voice_ms += FRAME_MS
            self._word_ms += FRAME_MS
            self._silence_ms = 0
            if self._word_ms >= params.min_word_length_ms and not self._in_word:
                self._in_word = True
                self._in_greeting = True
                self._words += 1
                if self._words > params.maximum_words:
                    return Verdict("machine", "max-words", ms)
            if self._voice_ms >= params.greeting_ms and self._in_greeting:
                return Verdict("machine", "long-greeting", ms)
            if self._word_ms >= params.maximum_word_length_ms:
                return Verdict("machine", "long-word", ms)
        if ms >= params.total_analysis_time_ms:
            return Verdict("unknown", "not-sure", ms)
        return None
