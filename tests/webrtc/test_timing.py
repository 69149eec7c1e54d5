"""The outbound track's clock over a minute, seen where it matters: at the caller.

An aiortc client stays on a call for 60 s (the demo core's greeting and echo,
then silence, which the track must send as frames too) and notes when each
decoded 20 ms frame arrives, with its RTP-derived ``pts``. The frames must
come every 20 ms ± 1 ms on average, and the edge's clock must not drift
against wall time: the offset between arrival time and media time, taken as
a median over the first and last 5 s (so network and scheduling jitter do not
count), moves by less than 10 ms. A grid that restarted after a stall, or a
sender paced by ``sleep(0.02)`` instead of a fixed grid, fails this. Slots
skipped after a stall (the machine is shared) leave a gap in ``pts``, not a
drift; the mean interval is taken between consecutive frames.
"""

from __future__ import annotations

import asyncio
import itertools
import statistics
import time
from collections.abc import Callable
from typing import Any

import pytest
from aiortc import RTCSessionDescription

from telephony_edge.webrtc.leg import SAMPLES, AgentTrack
from tests.conftest import Edge, Receiver, wait_for
from tests.webrtc.test_offer import Client, post_offer, settings_for

DURATION_S = 60.0
RATE = 48_000
EDGE_S = 5.0


@pytest.mark.timeout(180)  # a minute of audio, on a shared machine
async def test_outbound_frames_keep_20_ms_for_a_minute_without_drift(
    make_edge: Callable[..., Any], receiver: Receiver
) -> None:
    edge: Edge = await make_edge(settings_for(receiver, inactivity_s=120))
    client = Client()
    try:
        status, answer = await post_offer(edge, {"agent_id": "echo", "offer": await client.offer()})
        assert status == 200, answer
        await client.pc.setRemoteDescription(
            RTCSessionDescription(**{k: answer[k] for k in ("sdp", "type")})
        )
        await wait_for(lambda: len(client.arrivals) > 0, within=10)
        await asyncio.sleep(DURATION_S)
        arrivals = list(client.arrivals)
    finally:
        await client.close()
    assert not receiver.received or receiver.received[0]["call_status"] == "user-ended"

    (t_first, pts_first), (t_last, pts_last) = arrivals[0], arrivals[-1]
    frames = len(arrivals)
    steps = [(t1 - t0, (p1 - p0) // SAMPLES) for (t0, p0), (t1, p1) in itertools.pairwise(arrivals)]
    mean_ms = statistics.fmean(dt for dt, n in steps if n == 1) * 1000
    skipped = sum(n - 1 for _, n in steps)
    media_s = (pts_last - pts_first) / RATE
    # arrival minus media time: constant for a clock that keeps time
    offsets = [t - (pts - pts_first) / RATE for t, pts in arrivals]
    first = statistics.median(
        o for (t, _), o in zip(arrivals, offsets, strict=True) if t < t_first + EDGE_S
    )
    last = statistics.median(
        o for (t, _), o in zip(arrivals, offsets, strict=True) if t > t_last - EDGE_S
    )
    drift_ms = (last - first) * 1000
    print(
        f"{frames} frames in {t_last - t_first:.3f} s (media {media_s:.3f} s): "
        f"mean {mean_ms:.3f} ms, drift {drift_ms:+.2f} ms, {skipped} slots skipped"
    )
    assert frames > DURATION_S * 50 * 0.95
    assert frames + skipped == round(media_s / 0.02) + 1, "frames repeated or out of order"
    assert 19.0 <= mean_ms <= 21.0
    assert abs(drift_ms) < 10


async def test_a_stall_skips_the_missed_slots_instead_of_bursting() -> None:
    """A busy process: the track's media time stays on wall time, and no burst follows."""
    track = AgentTrack()
    loop = asyncio.get_running_loop()
    start = loop.time()
    before = [await track.recv() for _ in range(3)]
    assert [f.pts for f in before] == [0, SAMPLES, 2 * SAMPLES]
    time.sleep(0.3)  # noqa: ASYNC251 (on purpose: the loop is blocked for 15 slots)
    late = await track.recv()
    after = await track.recv()
    assert track.skipped >= 12 and late.pts == (3 + track.skipped) * SAMPLES
    assert after.pts == late.pts + SAMPLES
    assert abs(after.pts / RATE - (loop.time() - start)) < 0.025  # on the grid: no burst
    track.stop()
