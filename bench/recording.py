"""What recording costs a call: the per-frame taps and the once-a-second flush.

    python bench/recording.py [--seconds 600] [--channels stereo|mono]

Feeds one call's worth of frames (both directions, 20 ms each, on a
simulated clock) through :class:`TrackWriter` into a file in a temporary
directory and times, separately, the two taps the bridge calls per frame
and the flush the recording task runs each second (write + WAV header
rewrite + hand-off to the OS). Prints the medians and the CPU time the
recording adds per call-minute, to set against ``bench/twilio_load.py``'s
CPU-seconds per call-minute.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from telephony_edge.audio.frames import FRAME_BYTES
from telephony_edge.recording.writer import TrackWriter, WavFile


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=600.0, help="length of the call")
    parser.add_argument("--channels", choices=("stereo", "mono"), default="stereo")
    args = parser.parse_args()
    rng = np.random.default_rng(1)
    frames = [rng.integers(-8000, 8000, FRAME_BYTES // 2, dtype="<i2").tobytes() for _ in range(64)]
    clock = [0.0]
    tap_ns: list[float] = []  # per frame, both taps, timed a second (50 frames) at a time
    flush_ns: list[int] = []
    perf = time.perf_counter_ns
    with tempfile.TemporaryDirectory() as tmp:
        # a simulated clock, so the call's time passes at the pace frames are fed
        wav = WavFile(Path(tmp) / "bench.wav", args.channels)
        writer = TrackWriter(wav, args.channels, clock=lambda: clock[0])
        for second in range(int(args.seconds)):
            t0 = perf()
            for tick in range(50):
                clock[0] = second + tick * 0.02
                writer.caller(frames[tick])
                writer.agent(frames[tick])
            tap_ns.append((perf() - t0) / 50)
            t0 = perf()
            writer.flush()
            flush_ns.append(perf() - t0)
        writer.close()
        size = (Path(tmp) / "bench.wav").stat().st_size
    # the bridge's writer reads time.monotonic() once per tap instead of the simulated clock
    t0 = perf()
    for _ in range(100_000):
        time.monotonic()
    clock_ns = (perf() - t0) / 100_000
    taps = statistics.median(tap_ns)
    flush = statistics.median(flush_ns)
    taps += 2 * clock_ns
    per_minute_s = (taps * 50 * 60 + flush * 60) / 1e9
    print(f"{args.seconds:g} s {args.channels} call, {size / 1e6:.1f} MB written")
    print(
        f"both taps, per 20 ms frame: median {taps:.0f} ns (2 clock reads: {2 * clock_ns:.0f} ns)"
    )
    print(f"flush, per second:          median {flush / 1000:.1f} µs")
    print(f"recording CPU per call-minute: {per_minute_s * 1000:.2f} ms")


if __name__ == "__main__":
    main()
