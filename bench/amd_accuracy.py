"""Accuracy, time to decision and cost per frame of the edge's answering-machine detector.

    python bench/amd_accuracy.py            # needs espeak-ng and sox
    python bench/amd_accuracy.py --noise-dbfs -50   # the same over a noisy line

Generates the callee's side of calls with espeak-ng (several voices and
speeds; sox makes it canonical 16 kHz mono): voicemail greetings, with and
without a closing beep (400-2000 Hz, 0.25-0.6 s), and people picking up
("Hello?" and friends, then waiting). Each goes through
:class:`~telephony_edge.amd.detector.AmdDetector` frame by frame, as the
bridge feeds it, and the table (markdown) says what it decided, after how
much audio, whether it found the beep and when the message would start.
Cost: the detector's time per 20 ms frame (median over all files' frames,
and the 99th percentile), measured around ``feed`` alone. ``--noise-dbfs``
adds white noise at that RMS level to every call, silences included.
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from telephony_edge.amd.detector import AmdDetector, MessageEnd, Verdict
from telephony_edge.audio.frames import FRAME_BYTES, SAMPLE_RATE

VOICES = ["en-us", "en-gb", "en-gb-scotland", "en-029", "en-gb-x-rp"]
GREETINGS = [
    "Hi, you have reached Sam. I can't take your call right now. "
    "Please leave a message after the beep and I'll get back to you.",
    "Thank you for calling Northwind Dental. Our office is currently closed. "
    "Please leave your name and number and we will return your call.",
    "The person you are trying to reach is not available. At the tone, "
    "please record your message. When you are finished, hang up.",
    "Hey, it's Alex. Leave a message.",
]
HUMANS = [
    "Hello?",
    "Hello, who is this?",
    "Yes?",
    "Hi, this is Maria.",
    "Speaking.",
    # a person who talks at length at once looks like a greeting (as in app_amd)
    "Hello, yes, this is Maria Lopez speaking, who is calling please?",
]
BEEPS = [(1000.0, 0.5), (440.0, 0.3), (850.0, 0.25), (1400.0, 0.6), (2000.0, 0.4)]


@dataclass(frozen=True, slots=True)
class Sample:
    name: str
    truth: str  # human | machine
    beep_at_ms: int | None  # where the beep ends, if there is one
    pcm: bytes


@dataclass(frozen=True, slots=True)
class Outcome:
    sample: Sample
    result: str
    reason: str
    decided_ms: int
    message_ms: int | None
    beep: bool
    frame_us: list[float]


def speak(text: str, voice: str, speed: int) -> bytes:
    """espeak-ng's speech as canonical PCM (16 kHz mono PCM16), silence trimmed."""
    wav = subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(speed), "--stdout", text],
        check=True,
        capture_output=True,
    ).stdout
    canonical = f"-t raw -r {SAMPLE_RATE} -c 1 -b 16 -e signed-integer -".split()
    trim = [
        "silence",
        "1",
        "0.01",
        "0.1%",
        "reverse",
        "silence",
        "1",
        "0.01",
        "0.1%",
        "reverse",
        "norm",
        "-6",
    ]
    raw = subprocess.run(
        ["sox", "-t", "wav", "-", *canonical, *trim],
        input=wav,
        check=True,
        capture_output=True,
    ).stdout
    return raw


def silence(seconds: float) -> bytes:
    return bytes(round(seconds * SAMPLE_RATE) * 2)


def tone(hz: float, seconds: float) -> bytes:
    t = np.arange(round(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (0.5 * 32767 * np.sin(2 * np.pi * hz * t)).astype("<i2").tobytes()


def samples() -> list[Sample]:
    out: list[Sample] = []
    for i, (text, voice) in enumerate(itertools.product(GREETINGS, VOICES)):  # 20 greetings
        speed = (140, 170, 200, 230)[i % 4]
        with_beep = i % 3 != 2  # two in three end in a beep
        pcm = silence(0.4) + speak(text, voice, speed) + silence(0.4)
        beep_at = None
        if with_beep:
            hz, seconds = BEEPS[i % len(BEEPS)]
            pcm += tone(hz, seconds)
            beep_at = len(pcm) // 32
            tail = f"beep {hz:g} Hz"
        else:
            tail = "no beep"
        pcm += silence(4.0)
        name = f"greeting {GREETINGS.index(text) + 1}, {voice}, {speed} wpm, {tail}"
        out.append(Sample(name, "machine", beep_at, pcm))
    voices = (VOICES + VOICES[::-1] + VOICES)[: len(HUMANS) * 2]
    speeds = ([150, 170, 190, 210, 230] * 3)[: len(HUMANS) * 2]
    people = zip(HUMANS * 2, voices, speeds, strict=True)
    for text, voice, speed in people:
        pcm = silence(0.3) + speak(text, voice, speed) + silence(3.0)
        out.append(Sample(f'person: "{text}", {voice}, {speed} wpm', "human", None, pcm))
    return out


def with_noise(sample: Sample, dbfs: float, rng: np.random.Generator) -> Sample:
    clean = np.frombuffer(sample.pcm, dtype="<i2").astype(np.float64)
    noise = rng.normal(0.0, 32767 * 10 ** (dbfs / 20), clean.size)
    pcm = np.clip(clean + noise, -32768, 32767).astype("<i2").tobytes()
    return Sample(sample.name, sample.truth, sample.beep_at_ms, pcm)


def run(sample: Sample) -> Outcome:
    detector = AmdDetector()
    verdict: Verdict | None = None
    end: MessageEnd | None = None
    costs: list[float] = []
    pcm = sample.pcm
    for i in range(0, len(pcm) - FRAME_BYTES + 1, FRAME_BYTES):
        frame = pcm[i : i + FRAME_BYTES]
        t0 = time.perf_counter()
        found = detector.feed(frame)
        costs.append((time.perf_counter() - t0) * 1e6)
        for f in found:
            if isinstance(f, Verdict):
                verdict = f
            else:
                end = f
        if detector.done:
            break
    assert verdict is not None, "the detector always decides within its analysis time"
    return Outcome(
        sample,
        verdict.result,
        verdict.reason,
        verdict.after_ms,
        end.after_ms if end else None,
        bool(end and end.beep),
        costs,
    )


def main() -> None:
    for tool in ("espeak-ng", "sox"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is needed (apt-get install -y espeak-ng sox)")
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--noise-dbfs", type=float, default=None)
    args = parser.parse_args()
    cases = samples()
    if args.noise_dbfs is not None:
        rng = np.random.default_rng(12)
        cases = [with_noise(c, args.noise_dbfs, rng) for c in cases]
        print(f"white noise at {args.noise_dbfs:g} dBFS on every call\n")
    run(cases[0])  # warm-up (numpy's first calls)
    outcomes = [run(s) for s in cases]
    print("| callee | truth | result (reason) | decided after | beep found | message at |")
    print("|---|---|---|---|---|---|")
    for o in outcomes:
        s = o.sample
        expect_beep = s.beep_at_ms is not None
        beep = (
            "-"
            if s.truth == "human"
            else ("yes" if o.beep else "no") + ("" if o.beep == expect_beep else " (wrong)")
        )
        message = "-" if o.message_ms is None else f"{o.message_ms / 1000:.2f} s"
        if o.message_ms is not None and s.beep_at_ms is not None:
            message += f" (beep ends {s.beep_at_ms / 1000:.2f} s)"
        ok = "" if o.result == s.truth else " **wrong**"
        print(
            f"| {s.name} | {s.truth} | {o.result} ({o.reason}){ok} | "
            f"{o.decided_ms / 1000:.2f} s | {beep} | {message} |"
        )
    print()
    print("| set | n | correct | median decision | max decision |")
    print("|---|---|---|---|---|")
    for truth in ("machine", "human"):
        group = [o for o in outcomes if o.sample.truth == truth]
        correct = sum(o.result == truth for o in group)
        times = [o.decided_ms / 1000 for o in group]
        share = f"{correct}/{len(group)} ({100 * correct / len(group):.0f} %)"
        print(
            f"| {truth} | {len(group)} | {share} | "
            f"{statistics.median(times):.2f} s | {max(times):.2f} s |"
        )
    beeped = [o for o in outcomes if o.sample.truth == "machine"]
    beep_ok = sum(o.beep == (o.sample.beep_at_ms is not None) for o in beeped)
    print(f"| beep found / not found as it should | {len(beeped)} | {beep_ok}/{len(beeped)} | | |")
    costs = sorted(c for o in outcomes for c in o.frame_us)
    p99 = costs[int(len(costs) * 0.99)]
    print()
    print(
        f"detector cost per 20 ms frame: median {statistics.median(costs):.1f} µs, "
        f"mean {statistics.fmean(costs):.1f} µs, p99 {p99:.1f} µs over {len(costs)} frames"
    )


if __name__ == "__main__":
    main()
