"""The caller → agent clock, sans-I/O: time is passed in, frames come out."""

from __future__ import annotations

import audioop

from telephony_edge.audio.frames import FRAME_BYTES, SILENCE_FRAME
from telephony_edge.calls.caller_clock import CONCEALMENT_FADE, FRAME_S, CallerClock

LOUD = audioop.mul(b"\x00\x10" * (FRAME_BYTES // 2), 2, 1.0)  # a constant 4096


def test_no_fills_before_start_or_while_frames_come_on_time() -> None:
    clock = CallerClock()
    assert clock.fills(100.0) == [] and not clock.behind(100.0)
    clock.start(0.0)
    for n in range(500):  # 10 s of on-time frames, a little late each
        assert clock.admit(LOUD, n * FRAME_S + 0.015)
        assert not clock.behind(n * FRAME_S + 0.019)
    assert clock.stats.frames == 500 and clock.stats.concealed == clock.stats.silence == 0


def test_a_caller_that_stops_sending_gets_concealment_then_silence_on_the_clock() -> None:
    clock = CallerClock(slack=3)
    clock.start(0.0)
    for n in range(10):
        clock.admit(LOUD, n * FRAME_S)
    # then nothing: a phone's silence suppression, an ended track
    sent = 10
    for tick in range(11, 300):
        now = tick * FRAME_S
        fills = clock.fills(now)
        sent += len(fills)
        assert sent == max(10, tick - 3)  # one frame per 20 ms, ``slack`` behind
    first = clock.fills(0)  # nothing more is due at the same time
    assert first == []
    assert clock.stats.concealed == len(CONCEALMENT_FADE)
    assert clock.stats.silence == sent - 10 - len(CONCEALMENT_FADE)


def test_concealment_fades_the_last_frame_and_the_rest_is_silence() -> None:
    clock = CallerClock(slack=0)
    clock.start(0.0)
    clock.admit(LOUD, 0.0)
    fills = clock.fills(10 * FRAME_S)
    assert len(fills) == 9
    levels = [audioop.rms(frame, 2) for frame in fills]
    assert levels[:2] == [2048, 1024]  # 0.5, then 0.25 of the last frame
    assert fills[2:] == [SILENCE_FRAME] * 7


def test_a_new_frame_after_a_gap_ends_the_fade() -> None:
    clock = CallerClock(slack=0)
    clock.start(0.0)
    clock.admit(LOUD, 0.0)
    assert len(clock.fills(2 * FRAME_S)) == 1
    clock.admit(LOUD, 2 * FRAME_S)
    [again] = clock.fills(4 * FRAME_S)
    assert audioop.rms(again, 2) == 2048  # the fade starts over


def test_a_burst_after_a_stall_is_cut_to_the_clock() -> None:
    """Frames the network held back arrive at once: the agent must not stay behind."""
    clock = CallerClock(slack=3, soft_lead=5, hard_lead=25)
    clock.start(0.0)
    assert clock.fills(1.0) != []  # 1 s with nothing: filled up to slack behind
    admitted = sum(clock.admit(LOUD, 1.0) for _ in range(50))  # then 1 s of speech at once
    assert admitted == 3 + 25  # the slack, then up to the hard lead
    quiet = sum(clock.admit(SILENCE_FRAME, 1.0) for _ in range(10))
    assert quiet == 0  # past the soft lead, quiet frames go first
    assert clock.stats.dropped == 50 - admitted + 10


def test_quiet_frames_absorb_a_fast_sender_and_speech_is_kept() -> None:
    clock = CallerClock(slack=3, soft_lead=5, hard_lead=25)
    clock.start(0.0)
    for _ in range(6):
        assert clock.admit(LOUD, 0.0)  # 6 ahead of the clock
    assert not clock.admit(SILENCE_FRAME, 0.0)
    assert clock.admit(LOUD, 0.0)
