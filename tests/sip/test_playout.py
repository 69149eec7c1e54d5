"""The playout buffer (``telephony_edge.sip.playout``) against a seeded network, sans-I/O.

A speech fixture is cut into 20 ms PCMU packets, each sent at its time (a sender's
clock that may run fast or slow), given a delay or lost by a seeded schedule, and
pushed at its arrival; the pacer pulls a frame every 20 ms of the worker's clock. The
tests look at what the agent would hear: one frame per pull, the speech in order, a
loss costing its own 20 ms, a delay that follows the jitter, drift absorbed in quiet
frames. ``test_impairment.py`` runs the same kind of schedule over real sockets.
"""

from __future__ import annotations

import audioop
import random
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from telephony_edge.audio.g711 import Law
from telephony_edge.audio.transcode import G711Encoder
from telephony_edge.sip.leg import codec_pair
from telephony_edge.sip.playout import TICKS_PER_FRAME, PlayoutBuffer, comfort_noise
from tests.conftest import read_wav

FRAME = 640  # bytes of 16 kHz PCM16 in 20 ms
Delay = Callable[[int], float | None]  # packet number → network delay (s), None: lost


def speech_payloads(seconds: float) -> list[bytes]:
    """The two speech fixtures, looped to ``seconds``, as 20 ms PCMU payloads."""
    pcm = read_wav("speech_table.wav") + read_wav("speech_order.wav")
    pcm = (pcm * (int(seconds * 32000 / len(pcm)) + 1))[: int(seconds * 32000) // FRAME * FRAME]
    encoder = G711Encoder(Law.ULAW)
    return [encoder.encode(pcm[i : i + FRAME]) for i in range(0, len(pcm), FRAME)]


def reference(payloads: list[bytes]) -> list[bytes]:
    """The payloads decoded in order by a fresh decoder: what a perfect network gives."""
    decoder = codec_pair("PCMU")[0]
    return [decoder.decode(p) for p in payloads]


@dataclass
class Run:
    buffer: PlayoutBuffer
    frames: list[bytes]  # one per pull
    pulls: int
    times: list[float]  # of each frame's pull
    targets: list[int]  # the target delay (ticks) at each frame


def run(
    payloads: list[bytes],
    delay: Delay,
    *,
    period: float = 0.02,  # the sender's 20 ms, by the worker's clock
    extra_s: float = 0.5,
    max_delay_ms: int = 200,
    ts_of: Callable[[int], int] = lambda n: 1000 + TICKS_PER_FRAME * n,
    sent_at: Callable[[int], float] | None = None,  # default: every ``period``
    before_pull: Callable[[PlayoutBuffer, float], None] | None = None,
) -> Run:
    buffer = PlayoutBuffer(lambda size: codec_pair("PCMU", size)[0], max_delay_ms=max_delay_ms)
    arrivals = []
    for n, payload in enumerate(payloads):
        d = delay(n)
        if d is not None:
            arrivals.append(((sent_at(n) if sent_at else n * period) + d, n, payload))
    arrivals.sort()
    end = max(at for at, _, _ in arrivals) + extra_s
    frames: list[bytes] = []
    times: list[float] = []
    targets: list[int] = []
    pulls = 0
    i = 0
    t = 0.0073  # the pacer's phase against the sender's
    while t < end:
        while i < len(arrivals) and arrivals[i][0] <= t:
            at, n, payload = arrivals[i]
            buffer.push(ts_of(n) & 0xFFFFFFFF, payload, at)
            i += 1
        if before_pull is not None:
            before_pull(buffer, t)
        frame = buffer.pull(t)
        if frame is not None:
            frames.append(frame)
            times.append(t)
            targets.append(buffer.stats.target_ticks)
            pulls += 1
        elif frames:
            raise AssertionError("the buffer stopped giving frames")
        t += 0.02
    return Run(buffer, frames, pulls, times, targets)


QUIET = 200


@dataclass
class Alignment:
    start: int  # the frame the first packet is heard in
    matched: int  # frames equal to the reference's
    dropped_quiet: int  # reference frames not heard, all quiet ones
    added_quiet: int  # frames heard that are not in the reference, all quiet ones
    other: int  # anything else: concealment, or a mismatch


def align(frames: list[bytes], ref: list[bytes]) -> Alignment:
    """Walk what was heard against the reference: equal frames, quiet frames dropped or
    added (the delay adapting), and the rest."""
    first = next(j for j, f in enumerate(ref) if audioop.rms(f, 2) >= QUIET)
    start = frames.index(ref[first]) - first
    result = Alignment(start, 0, 0, 0, 0)
    i, j = start, 0
    while i < len(frames) and j < len(ref):
        if frames[i] == ref[j]:
            result.matched += 1
            i, j = i + 1, j + 1
        elif i + 1 < len(frames) and frames[i + 1] == ref[j] and audioop.rms(frames[i], 2) < QUIET:
            result.added_quiet += 1
            i += 1
        elif j + 1 < len(ref) and frames[i] == ref[j + 1] and audioop.rms(ref[j], 2) < QUIET:
            result.dropped_quiet += 1
            j += 1
        else:
            result.other += 1
            i, j = i + 1, j + 1
    return result


def test_a_steady_stream_plays_every_packet_in_order_after_the_starting_delay() -> None:
    payloads = speech_payloads(3)
    result = run(payloads, lambda n: 0.030)
    assert len(result.frames) == result.pulls  # one frame a pull, from the first packet on
    alignment = align(result.frames, reference(payloads))
    assert alignment.start <= 2  # 40 ms at most: the starting target
    # no jitter: the target falls to 20 ms, a quiet frame dropped on the way
    assert (alignment.other, alignment.added_quiet) == (0, 0)
    assert alignment.matched + alignment.dropped_quiet + alignment.start >= len(payloads)
    stats = result.buffer.stats
    assert stats.delay_ticks < stats.target_ticks + TICKS_PER_FRAME
    assert (stats.late, stats.target_ticks) == (0, TICKS_PER_FRAME)
    assert stats.concealed_ticks == 480  # the stream's end: 60 ms of its last period, fading


def test_a_lost_packet_costs_its_own_20_ms_and_delays_nothing_after_it() -> None:
    payloads = speech_payloads(3)
    loud = max(range(40, 100), key=lambda n: audioop.rms(reference(payloads)[n], 2))
    clean = run(payloads, lambda n: 0.030)
    lossy = run(payloads, lambda n: None if n == loud else 0.030)
    slot = clean.frames.index(reference(payloads)[loud])
    assert lossy.frames[:slot] == clean.frames[:slot]
    # the gap is the speech before it repeated (not a hole of zeros) …
    assert audioop.rms(lossy.frames[slot], 2) > 0.3 * audioop.rms(clean.frames[slot], 2)
    # … and every later packet plays in the slot it had without the loss
    later = range(slot + 2, len(clean.frames))
    assert sum(lossy.frames[k] == clean.frames[k] for k in later) >= 0.97 * len(later)
    assert lossy.buffer.stats.concealed_ticks >= TICKS_PER_FRAME
    assert audioop.rms(lossy.frames[slot + 1], 2) > 0  # the join into the next packet


def test_reordered_packets_play_in_order() -> None:
    payloads = speech_payloads(3)
    swapped = run(payloads, lambda n: 0.060 if n % 2 == 0 else 0.030)  # each even one after
    clean = run(payloads, lambda n: 0.060)
    assert swapped.buffer.stats.late == 0
    alignment = align(swapped.frames, reference(payloads))
    assert alignment.other == 0 and alignment.matched >= len(payloads) - 3
    assert alignment.start <= align(clean.frames, reference(payloads)).start + 1


def jitter(seed: int, low: float, high: float) -> Delay:
    rng = random.Random(seed)
    table: dict[int, float] = {}
    return lambda n: table.setdefault(n, rng.uniform(low, high))


def test_the_delay_follows_measured_jitter_up_and_back_down() -> None:
    payloads = speech_payloads(24)
    rng_delay = jitter(18, 0.010, 0.090)  # 80 ms of jitter for 12 s, then 4 ms
    targets: list[float] = []

    def watch(buffer: PlayoutBuffer, t: float) -> None:
        if abs(t % 1.0) < 0.02:
            targets.append(buffer.target_ms)

    result = run(
        payloads, lambda n: rng_delay(n) if n < 600 else 0.010 + n % 2 * 0.004, before_pull=watch
    )
    assert len(result.frames) == result.pulls
    at_12_s, at_end = targets[11], targets[-1]
    assert 70 <= at_12_s <= 100  # the 95th percentile of 80 ms, plus 5 ms
    assert at_end <= 30  # shrunk back, 5 ms a step, once calm
    late = result.buffer.stats.late
    assert late < 0.06 * 600  # a twentieth may come after their time while it learns


def test_the_delay_never_passes_the_configured_maximum() -> None:
    payloads = speech_payloads(6)
    result = run(payloads, jitter(7, 0.0, 0.6), max_delay_ms=120)
    assert result.buffer.target_ms == 120
    assert result.buffer.stats.max_delay_ticks <= (120 + 20 + 5) * 8
    assert len(result.frames) == result.pulls


def test_a_fast_callers_clock_is_absorbed_by_dropping_quiet_frames() -> None:
    payloads = speech_payloads(120)
    result = run(payloads, lambda n: 0.02, period=0.01996)  # the caller's clock 0.2 % fast
    stats = result.buffer.stats
    assert stats.dropped_frames >= 10  # 240 ms of the caller's time over two minutes
    assert stats.late == 0 and stats.concealed_ticks == 480  # only at the end
    assert stats.delay_ticks <= stats.target_ticks + 2 * TICKS_PER_FRAME
    alignment = align(result.frames, reference(payloads))
    assert alignment.other == 0 and alignment.dropped_quiet >= 10


def test_a_slow_callers_clock_is_absorbed_by_adding_frames_in_silence() -> None:
    payloads = speech_payloads(120)
    result = run(payloads, lambda n: 0.02, period=0.02004)  # 0.2 % slow
    stats = result.buffer.stats
    assert stats.inserted_frames >= 10
    assert stats.late == 0  # nothing starves: the frames went in where it was quiet
    assert stats.delay_ticks >= stats.target_ticks - 2 * TICKS_PER_FRAME
    alignment = align(result.frames, reference(payloads))
    assert alignment.other == 0 and alignment.added_quiet >= 10


def test_a_caller_that_stops_sending_gets_silence_on_the_clock_then_its_next_talkspurt() -> None:
    payloads = speech_payloads(2)
    pause = 150  # packets: 3 s with nothing sent (silence suppression)
    result = run(
        payloads + payloads,
        lambda n: 0.03,
        ts_of=lambda n: 1000 + TICKS_PER_FRAME * (n if n < 100 else n + pause),
        sent_at=lambda n: 0.02 * (n if n < 100 else n + pause),
    )
    stats = result.buffer.stats
    assert len(result.frames) == result.pulls  # nothing missing while the caller sent nothing
    assert stats.silence_ticks >= 2.8 * 8000
    assert stats.late == 0
    # the talkspurt met the target (to half a frame: frames stay whole packets)
    assert abs(stats.delay_ticks - stats.target_ticks) <= TICKS_PER_FRAME // 2


def test_comfort_noise_fills_the_callers_silence_at_its_level() -> None:
    payloads = speech_payloads(1)

    def cn(buffer: PlayoutBuffer, t: float) -> None:
        if 1.2 < t < 1.22:
            buffer.comfort_noise(40)  # -40 dBov

    result = run(payloads, lambda n: 0.03, before_pull=cn, extra_s=1.0)
    tail = result.frames[-10:]
    expected = 32767 * 10 ** (-40 / 20)
    assert all(0.7 * expected < audioop.rms(f, 2) < 1.3 * expected for f in tail)
    assert audioop.rms(comfort_noise(FRAME, 127), 2) < 2


def envelope(pcm: bytes) -> np.ndarray:
    """RMS per 20 ms."""
    return np.array([audioop.rms(pcm[i : i + FRAME], 2) for i in range(0, len(pcm), FRAME)])


def test_an_impaired_network_keeps_the_clock_the_speech_and_a_bounded_delay() -> None:
    """Jitter up to 40 ms, 3 % loss, 5 % reordered, the caller's clock 0.3 % fast."""
    payloads = speech_payloads(20)
    rng = random.Random(2026)
    schedule: dict[int, float | None] = {}
    for n in range(len(payloads)):
        roll = rng.random()
        if roll < 0.03:
            schedule[n] = None
        else:
            schedule[n] = 0.015 + rng.uniform(0, 0.040) + (0.030 if roll > 0.95 else 0)
    result = run(payloads, schedule.__getitem__, period=0.01994)
    stats = result.buffer.stats
    assert len(result.frames) == result.pulls  # on the clock
    ref = reference(payloads)
    sent, heard = envelope(b"".join(ref)), envelope(b"".join(result.frames))
    best = [  # per 2 s: drift moves the lag (and a segment with a quiet frame dropped has two)
        max(
            np.corrcoef(sent[start : start + 100], heard[start + lag : start + lag + 100])[0, 1]
            for lag in range(-15, 15)
        )
        for start in range(15, len(sent) - 115, 100)
    ]
    assert np.mean(best) > 0.95 and min(best) > 0.85  # the speech's envelope survives
    # each packet heard: how much later than its best-case arrival (sent + 15 ms)
    index = {frame: n for n, frame in enumerate(ref) if audioop.rms(frame, 2) >= QUIET}
    added = [
        (t - (n * 0.01994 + 0.015)) * 1000 - target / 8
        for frame, t, target in zip(result.frames, result.times, result.targets, strict=True)
        if (n := index.get(frame)) is not None
    ]
    assert len(added) > 0.8 * len(index)
    assert max(added) <= 20  # never more than the target plus one pacer tick
    assert stats.concealed_ticks > 0 and stats.late < 0.05 * len(payloads)


def test_a_talkspurt_delayed_more_than_the_last_is_played_not_dropped_as_late() -> None:
    """The first packets fast, the rest 270 ms slower (a path whose delay stepped up while
    the caller paused, or the packets a NAT probation held): nothing heard is lost."""
    payloads = speech_payloads(2.2)
    result = run(payloads, lambda n: 0.001 if n < 3 else 0.27)
    stats = result.buffer.stats
    assert (stats.decoded, stats.late) == (len(payloads), 0)
    alignment = align(result.frames, reference(payloads))
    assert alignment.other <= 2  # the step itself
    assert stats.delay_ticks <= stats.target_ticks + TICKS_PER_FRAME  # back on target


def test_a_stall_of_the_worker_drops_the_callers_stale_audio() -> None:
    """No pull for 300 ms (the worker stalled), then the pacer's ``skipped``: the buffer
    drops that much and is back at its delay (before: 300 ms later for the rest of the call)."""
    payloads = speech_payloads(4)
    buffer = PlayoutBuffer(lambda size: codec_pair("PCMU", size)[0])
    sent = {n: n * 0.02 + 0.03 for n in range(len(payloads))}  # 30 ms on the network
    pushed = 0
    delays = []
    t = 0.0073
    while t < 3.5:
        while pushed < len(payloads) and sent[pushed] <= t:
            buffer.push(1000 + 160 * pushed, payloads[pushed], sent[pushed])
            pushed += 1
        if 1.5 <= t < 1.8:  # stalled: no tick
            t += 0.02
            continue
        if delays and t - 0.02 < 1.8 <= t:
            buffer.skip(15)  # what Pacer.skipped says in the tick after the stall
        buffer.pull(t)
        delays.append((t, buffer.stats.delay_ticks))
        t += 0.02
    soon_after = next(d for at, d in delays if at >= 1.9)  # 100 ms after the stall
    assert soon_after <= buffer.stats.target_ticks + TICKS_PER_FRAME, soon_after
    assert buffer.stats.dropped_frames >= 15 and buffer.stats.late == 0
