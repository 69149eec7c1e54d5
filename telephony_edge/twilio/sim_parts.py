"""What the Twilio simulator reads and writes: TwiML, μ-law audio, and one call's result.

Kept apart from :mod:`.simulator` (the call itself) so each stays small; the
simulator re-exports these names for its users.
"""

from __future__ import annotations

import audioop
import binascii
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from xml.etree import ElementTree

from telephony_edge.simulate import (
    load_wav_pcm,
    silent_end_reason,
    unanswered_reason,
    write_wav_pcm,
)

RATE = 8000
CHUNK_BYTES = 160  # 20 ms of 8 kHz μ-law
CHUNK_S = 0.02
ULAW_SILENCE = b"\xff" * CHUNK_BYTES


def new_sid(prefix: str) -> str:
    """A Twilio-shaped SID: the prefix and 32 hex digits."""
    return prefix + secrets.token_hex(16)


@dataclass(frozen=True, slots=True)
class StreamInstruction:
    """The ``<Connect><Stream>`` of a TwiML answer."""

    url: str
    parameters: dict[str, str]


@dataclass(frozen=True, slots=True)
class TwimlAnswer:
    """What the simulator understood of the TwiML (the parts the edge uses).

    ``redirect``: the URL of a ``<Redirect>`` among the document's verbs, which
    Twilio follows when it gets there (after a ``<Connect>``: once its stream ends),
    with ``redirect_method`` (``POST`` unless it says ``GET``).
    """

    stream: StreamInstruction | None
    say: tuple[str, ...]
    hangup: bool
    redirect: str | None = None
    redirect_method: str = "POST"


def parse_twiml(document: str) -> TwimlAnswer:
    """Read the verbs the edge answers with; raise ValueError for non-TwiML."""
    root = ElementTree.fromstring(document)
    if root.tag != "Response":
        raise ValueError(f"TwiML root is <{root.tag}>, not <Response>")
    stream = None
    for element in root.iter("Stream"):
        params = {p.get("name", ""): p.get("value", "") for p in element.iter("Parameter")}
        stream = StreamInstruction(url=element.get("url", ""), parameters=params)
        break
    say = tuple((e.text or "").strip() for e in root.iter("Say"))
    verb = next((e for e in root if e.tag == "Redirect"), None)
    return TwimlAnswer(
        stream=stream,
        say=say,
        hangup=root.find("Hangup") is not None,
        redirect=None if verb is None else (verb.text or "").strip(),
        redirect_method="GET" if verb is not None and verb.get("method") == "GET" else "POST",
    )


@dataclass(slots=True)
class Resume:
    """One break of the call's stream and how it came back (seconds from the first start).

    ``gap_s`` is what the caller heard: from the end of the last agent audio of
    the old stream to the first of the new one (None: none came).
    """

    ended_at_s: float  # the stream ended (its socket closed)
    heard_until_s: float  # the old stream's audio played until then (its unplayed dropped)
    hops: int = 0  # <Redirect>s followed
    streamed_at_s: float | None = None  # a new stream started
    first_audio_at_s: float | None = None  # its first agent audio came
    gap_s: float | None = None


def load_wav_ulaw(path: str | Path) -> bytes:
    """A WAV file of any rate, width and channel count as 8 kHz mono μ-law."""
    return audioop.lin2ulaw(load_wav_pcm(path, RATE), 2)


def write_wav_ulaw(path: str | Path, ulaw: bytes) -> None:
    """8 kHz μ-law as an 8 kHz PCM16 mono WAV."""
    write_wav_pcm(path, audioop.ulaw2lin(ulaw, 2), RATE)


def encode_payloads(ulaw: bytes) -> list[bytes]:
    """Base64 of each 20 ms chunk (the last one padded with silence), encoded once."""
    chunks = []
    for i in range(0, len(ulaw), CHUNK_BYTES):
        chunk = ulaw[i : i + CHUNK_BYTES]
        chunk += ULAW_SILENCE[: CHUNK_BYTES - len(chunk)]
        chunks.append(binascii.b2a_base64(chunk, newline=False))
    return chunks


#: one 20 ms of μ-law silence, base64 (what a quiet caller sends)
SILENCE_PAYLOAD = binascii.b2a_base64(ULAW_SILENCE, newline=False)


@dataclass(slots=True)
class SimulationResult:
    """What happened on one simulated call."""

    call_sid: str
    outcome: str = "pending"  # streamed | answered-without-stream | refused | failed
    twiml: str = ""
    answer: TwimlAnswer | None = None
    http_status: int = 0
    close_code: int | None = None
    close_reason: str = ""
    webhook_s: float | None = None  # webhook POST → TwiML received
    setup_s: float | None = None  # webhook POST → stream started (start sent)
    first_audio_s: float | None = None  # start sent → first agent audio received
    reply_latency_s: float | None = None  # caller audio ended → next agent audio
    frames_sent: int = 0
    frames_received: int = 0
    reply_frames: int = 0  # received after the caller's audio ended
    frames_played: int = 0  # received and not cleared before their turn came
    unheard_frames: int = 0  # agent audio still queued when the edge ended the call: cut off
    late_frames: int = 0  # agent audio that came after the playout buffer ran dry mid-turn
    jitter_ms: list[int] = field(default_factory=list)  # arrival lateness histogram, 1 ms
    max_buffered_s: float = 0.0  # the most agent audio queued ahead of its playing
    send_late: int = 0  # caller frames the simulator sent over 20 ms behind schedule
    marks_received: int = 0
    marks_echoed: int = 0
    clears: int = 0
    clear_times: list[float] = field(default_factory=list)  # seconds since start
    spoke_at_s: float | None = None  # start sent → the caller's first audio (after the greeting)
    edge_closed: bool = False
    rest_update: str = ""  # what the edge asked of the call through the REST stand-in
    digits_played: list[str] = field(default_factory=list)  # <Play digits> of new TwiML
    streams: int = 0  # streams opened (more than one: keys played, or the call resumed)
    resumes: list[Resume] = field(default_factory=list)  # the stream ended, the call went on
    frames_lost: int = 0  # caller frames said while no stream carried them (a resume)
    duration_s: float = 0.0
    heard_ulaw: bytes = b""
    error: str = ""

    def failure(self) -> str | None:
        """Why the call failed, in one line; None when the caller got through to the agent."""
        if self.outcome == "failed":
            return self.error or "the call failed"
        if self.outcome == "answered-without-stream":
            return unanswered_reason("media stream", self.answer.say if self.answer else ())
        if self.outcome == "refused":
            close = f"{self.close_code} {self.close_reason}".strip()
            return f"the edge refused the media stream (close {close})"
        if self.frames_received == 0 and (self.edge_closed or self.rest_update):
            how = self.rest_update or "closed the media stream"
            return silent_end_reason(how, self.close_code, self.close_reason)
        return None

    def summary(self) -> str:
        def ms(value: float | None) -> str:
            return "-" if value is None else f"{value * 1000:.0f} ms"

        lines = [
            f"call {self.call_sid}: {self.outcome}"
            + (f" ({self.error})" if self.error else "")
            + (f" close {self.close_code} {self.close_reason}".rstrip() if self.close_code else ""),
            f"  webhook answered in {ms(self.webhook_s)}, stream set up in {ms(self.setup_s)}",
            f"  first agent audio {ms(self.first_audio_s)} after start; "
            f"reply {ms(self.reply_latency_s)} after the caller's audio ended",
            f"  frames sent {self.frames_sent}, received {self.frames_received} "
            f"(played {self.frames_played}, late {self.late_frames}), "
            f"marks {self.marks_received} (echoed {self.marks_echoed}), clears {self.clears}",
            f"  duration {self.duration_s:.1f} s"
            + (f", the caller spoke at {self.spoke_at_s:.1f} s" if self.spoke_at_s else "")
            + (", the edge ended the call" if self.edge_closed else ""),
        ]
        if self.rest_update:
            lines.append(f"  the edge {self.rest_update}")
        if self.digits_played:
            lines.append(f"  the edge played the digits {' '.join(self.digits_played)}")
        for resume in self.resumes:
            gap = "no audio after it" if resume.gap_s is None else f"{resume.gap_s * 1000:.0f} ms"
            lines.append(
                f"  the stream ended at {resume.ended_at_s:.1f} s and came back"
                f" ({resume.hops} redirect(s)): audio gap {gap}"
            )
        if self.clears:
            lines.append(
                f"  barge-in: the edge cleared the agent's audio {self.clears} time(s) "
                f"(Twilio clear, first at {self.clear_times[0]:.1f} s)"
            )
        if self.answer is not None and self.answer.say:
            lines.append(f"  said: {' / '.join(self.answer.say)}")
        return "\n".join(lines)
