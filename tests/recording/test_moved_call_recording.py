"""A recorded Twilio call that outlives its worker is one recording of the whole call.

Two real ``serve`` workers behind Caddy on ``redis-server`` (``tests/failover_cluster.py``),
recording to S3 (moto's server) through a spool directory both share (one node, or a
shared volume); the simulated Twilio call runs on worker A while the agent core talks (a
440 Hz tone), A is SIGKILLed (or SIGTERMed: a drain), the call goes on on B (two seconds
of tone, then quiet) and the caller hangs up there. The end-of-call webhook names one
recording: A's part, silence for the move, B's part, on the call's timeline.
"""

from __future__ import annotations

import asyncio
import hashlib
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import wait_for
from tests.failover_cluster import Cluster, Live, cluster, tone
from tests.recording.audio import RATE, locate, read_channels
from tests.recording.s3 import ACCESS, BUCKET, stored

WINDOW_S = 0.1
LOUD = 1000.0  # the core's tone is ~7000 RMS; silence is 0
MAX_GAP_S = 2.0
ON_A_S = 6.0  # the call's time on the first worker before it goes


def recording_config(moto_url: str, spool: Callable[[str], Path]) -> Any:
    def configure(name: str, config: dict[str, Any]) -> None:
        config["agents"]["agent"]["recording"] = {"enabled": True}  # stereo WAV
        config["recording"] = {
            "directory": str(spool(name)),
            "storage": "s3",
            "s3": {"bucket": BUCKET, "endpoint_url": moto_url, "prefix": "calls/", **ACCESS},
            "finish_timeout_s": 30,
        }

    return configure


def loud_windows(samples: np.ndarray) -> np.ndarray:
    """Per 100 ms of ``samples``: whether the tone is there."""
    n = int(WINDOW_S * RATE)
    frames = samples[: len(samples) // n * n].reshape(-1, n)
    loud: np.ndarray = np.sqrt(np.mean(frames**2, axis=1)) > LOUD
    return loud


def longest_run(flags: np.ndarray) -> int:
    """The most ``True`` in a row."""
    best = run = 0
    for flag in flags:
        run = run + 1 if flag else 0
        best = max(best, run)
    return best


def came_back(live: Live) -> bool:
    """The simulated Twilio followed the ``<Redirect>`` and the agent is heard again."""
    resumes = live.call.result.resumes
    return bool(resumes) and resumes[-1].gap_s is not None


async def one_webhook(c: Cluster, live: Live) -> dict[str, Any]:
    await wait_for(lambda: c.webhooks_of(live.call_id), 20)
    await asyncio.sleep(1.0)  # time for a second one, were one coming
    [hook] = c.webhooks_of(live.call_id)
    return hook


async def moved_call(
    c: Cluster, kill: Callable[[], None], cause: str
) -> tuple[Live, float, dict[str, Any]]:
    """One recorded call: on A for :data:`ON_A_S`, moved to B by ``kill``, ended there.

    Returns it, how long it lasted (the caller's clock) and its one webhook."""
    loop = asyncio.get_running_loop()
    [live] = await c.place(1)
    placed = loop.time()
    await wait_for(lambda: live.call.result.frames_received > 0, 10)  # the agent talks
    assert (await c.record(live.call_id, "worker-b"))["owner"] == "worker-a"
    await asyncio.sleep(max(0.0, ON_A_S - (loop.time() - placed)))
    kill()
    await wait_for(lambda: came_back(live), 20)
    await asyncio.sleep(5.0)  # B: the core's two seconds of tone, then quiet
    await c.hang_up([live])
    hook = await one_webhook(c, live)
    assert hook["call_status"] == "user-ended"
    [move] = hook["migrations"]
    assert (move["from_worker"], move["to_worker"], move["cause"]) == (
        "worker-a",
        "worker-b",
        cause,
    )
    return live, live.call.result.duration_s, hook


async def check_whole_recording(
    s3: Any, live: Live, duration_s: float, hook: dict[str, Any]
) -> tuple[list[dict[str, Any]], np.ndarray]:
    """The webhook's recording is the bucket's one object, as long as the call; its parts
    and agent channel."""
    meta = hook["recording"]
    assert meta is not None, "the webhook names no recording"
    objects = await stored(s3)
    assert list(objects) == [f"calls/{live.call_id}.whole.wav"], list(objects)
    [body] = objects.values()
    assert hashlib.sha256(body).hexdigest() == meta["sha256"]
    assert meta["size_bytes"] == len(body)
    channels, (_, agent) = read_channels(body)
    assert channels == 2
    assert len(agent) / RATE == pytest.approx(meta["duration_s"], abs=0.05)
    assert meta["duration_s"] == pytest.approx(duration_s, abs=1.0)
    return meta["parts"], agent


def check_timeline(agent: np.ndarray, live: Live) -> dict[str, float]:
    """The agent's tone before the move and after it, where the caller heard them, with at
    most :data:`MAX_GAP_S` of silence between; the figures."""
    [resume] = live.call.result.resumes
    assert resume.first_audio_at_s is not None
    loud = loud_windows(agent)
    # before: the core talked from its greeting on until A went (its last flush kept)
    before = loud[int(1.0 / WINDOW_S) : int((resume.ended_at_s - 1.5) / WINDOW_S)]
    assert before.mean() > 0.9, before.mean()
    # after: the resumed two seconds of tone (the last tone of the call), where the
    # caller's phone began to play them, then quiet to the end
    ends = len(loud) - int(np.argmax(loud[::-1]))  # the window after the last loud one
    b_at_s = ends * WINDOW_S - 2.0
    assert abs(b_at_s - resume.first_audio_at_s) <= 0.5, (b_at_s, resume)
    assert loud[int((b_at_s + 0.2) / WINDOW_S) : int((b_at_s + 1.8) / WINDOW_S)].all()
    assert len(loud) - ends >= 2.0 / WINDOW_S  # the call went on, quiet, after it
    # the same 440 Hz tone on both sides of the move
    reference = np.frombuffer(tone(0.25), dtype="<i2").astype(np.float64)
    for at in (resume.ended_at_s - 3.0, b_at_s + 0.5):
        piece = agent[int(at * RATE) : int((at + 0.5) * RATE)]
        _, score = locate(piece, reference)
        assert score > 0.9, (at, score)
    # the move's silence: the longest quiet stretch between A's talk and B's
    quiet = longest_run(~loud[int(1.0 / WINDOW_S) : int((b_at_s + 0.5) / WINDOW_S)])
    gap_s = quiet * WINDOW_S
    assert gap_s <= MAX_GAP_S, gap_s
    return {"gap_s": gap_s, "b_at_s": b_at_s}


async def test_a_recorded_call_on_a_killed_worker_is_one_recording_of_the_whole_call(
    redis_server: Any, tmp_path: Path, moto_url: str, moto_bucket: Any
) -> None:
    spool = tmp_path / "spool"  # both workers' (one node, or a shared volume)
    configure = recording_config(moto_url, lambda name: spool)
    async with cluster(tmp_path, redis_server.url, configure=configure) as c:
        victim = c.workers["worker-a"].process
        live, duration_s, hook = await moved_call(c, victim.kill, "crash")
        parts, agent = await check_whole_recording(moto_bucket, live, duration_s, hook)
        figures = check_timeline(agent, live)
        first, second = parts
        assert first["file"] == f"{live.call_id}.wav" and first["worker"] == "worker-a"
        assert second["file"] == f"{live.call_id}.g1.wav" and second["worker"] == "worker-b"
        assert first["joined"] and second["joined"] and first["start_s"] == 0
        assert second["start_s"] == pytest.approx(figures["b_at_s"], abs=1.0)
        await wait_for(lambda: not list(spool.iterdir()), 5)  # the parts went into the whole
        survivor = c.workers["worker-b"]
        assert survivor.metric("telephony_edge_recording_parts_total", outcome="joined") == 1
        survivor.assert_healthy()
        print(
            f"killed: recording {hook['recording']['duration_s']:.2f} s, call {duration_s:.2f} s,"
            f" the move's silence {figures['gap_s']:.1f} s"
        )


async def test_a_drained_worker_finishes_its_part_and_the_other_joins_it(
    redis_server: Any, tmp_path: Path, moto_url: str, moto_bucket: Any
) -> None:
    spool = tmp_path / "spool"
    configure = recording_config(moto_url, lambda name: spool)
    async with cluster(tmp_path, redis_server.url, configure=configure) as c:
        draining = c.workers["worker-a"].process
        live, duration_s, hook = await moved_call(
            c, lambda: draining.send_signal(signal.SIGTERM), "drain"
        )
        assert draining.wait(15) == 0
        parts, agent = await check_whole_recording(moto_bucket, live, duration_s, hook)
        figures = check_timeline(agent, live)
        assert [part["joined"] for part in parts] == [True, True]
        assert not list(spool.iterdir())
        print(f"drained: the move's silence {figures['gap_s']:.1f} s")


async def test_a_part_on_another_nodes_spool_is_listed_and_the_rest_kept_on_the_timeline(
    redis_server: Any, tmp_path: Path, moto_url: str, moto_bucket: Any
) -> None:
    configure = recording_config(moto_url, lambda name: tmp_path / f"spool-{name}")
    async with cluster(tmp_path, redis_server.url, configure=configure) as c:
        victim = c.workers["worker-a"].process
        live, duration_s, hook = await moved_call(c, victim.kill, "crash")
        meta = hook["recording"]
        first, second = meta["parts"]
        assert (first["worker"], first["joined"]) == ("worker-a", False)
        assert f"calls/{live.call_id}.wav" in first["url"]  # where A's node uploads it
        assert (second["worker"], second["joined"]) == ("worker-b", True)
        objects = await stored(moto_bucket)
        assert list(objects) == [f"calls/{live.call_id}.whole.wav"]
        _, (_, agent) = read_channels(objects[f"calls/{live.call_id}.whole.wav"])
        assert meta["duration_s"] == pytest.approx(duration_s, abs=1.0)
        loud = loud_windows(agent)
        [resume] = live.call.result.resumes
        assert not loud[: int((resume.ended_at_s - 0.5) / WINDOW_S)].any()  # A's: silence
        assert loud[int((resume.first_audio_at_s + 0.5) / WINDOW_S) :].any()  # B's: there
        # A's part stays on its own node's spool, for its sweep to upload
        assert (tmp_path / "spool-worker-a" / f"{live.call_id}.wav").stat().st_size > 0
        survivor = c.workers["worker-b"]
        assert survivor.metric("telephony_edge_recording_parts_total", outcome="missing") == 1


async def test_a_drained_part_no_other_worker_can_reach_is_uploaded_before_it_exits(
    redis_server: Any, tmp_path: Path, moto_url: str, moto_bucket: Any
) -> None:
    configure = recording_config(moto_url, lambda name: tmp_path / f"spool-{name}")
    async with cluster(tmp_path, redis_server.url, configure=configure) as c:
        draining = c.workers["worker-a"].process
        live, duration_s, hook = await moved_call(
            c, lambda: draining.send_signal(signal.SIGTERM), "drain"
        )
        assert draining.wait(15) == 0
        first, second = hook["recording"]["parts"]
        assert (first["worker"], first["joined"]) == ("worker-a", False)
        assert (second["worker"], second["joined"]) == ("worker-b", True)
        assert hook["recording"]["duration_s"] == pytest.approx(duration_s, abs=1.0)
        objects = await stored(moto_bucket)
        part, whole = f"calls/{live.call_id}.wav", f"calls/{live.call_id}.whole.wav"
        assert sorted(objects) == [part, whole]
        # A's part, finished and uploaded as it left: the call up to the move
        _, (_, agent) = read_channels(objects[part])
        [resume] = live.call.result.resumes
        # (to its bridge's end, a moment after the stream's: cut where B's began, if joined)
        assert resume.ended_at_s - 0.5 <= len(agent) / RATE <= resume.ended_at_s + 2.0
        assert loud_windows(agent)[10 : int((resume.ended_at_s - 0.5) / WINDOW_S)].mean() > 0.9
        assert not list((tmp_path / "spool-worker-a").iterdir())
