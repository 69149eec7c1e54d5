"""A moved call's parts joined on the call's timeline (recording/joiner.py), in one process:
two workers' ``Recordings`` on one spool, a simulated clock, real ffmpeg for mp3."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from telephony_edge.config import RecordingOptions, RecordingSettings
from telephony_edge.recording.recorder import Continued, Recordings
from tests.conftest import require_binary
from tests.recording.audio import RATE, read_channels
from tests.recording.simulated import Clock, feed

MP3 = RecordingOptions(enabled=True, channels="stereo", format="mp3")
WAV = RecordingOptions(enabled=True, channels="stereo", format="wav")


def worker(spool: Path, name: str) -> tuple[Recordings, Clock]:
    clock = Clock()
    settings = RecordingSettings(directory=str(spool), flush_interval_s=10)
    return Recordings(
        settings, public_url="http://edge", secret="s" * 16, worker_id=name, clock=clock
    ), clock


def names(spool: Path) -> list[str]:
    return sorted(p.name for p in spool.iterdir())


def loudness(path: Path) -> np.ndarray:
    """Per 100 ms of the file's left channel, its RMS (mp3 decoded by ffmpeg)."""
    data = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(path), "-f", "wav", "-"],
        capture_output=True,
        check=True,
    ).stdout
    _, (left, _) = read_channels(data)
    n = RATE // 10
    return np.sqrt(np.mean(left[: len(left) // n * n].reshape(-1, n) ** 2, axis=1))


async def moved(
    spool: Path, options: RecordingOptions, *, b_starts_s: float, lose_a: bool = False
) -> tuple[dict[str, Any], Path]:
    """A records 4 s and lets the call go; B takes it over ``b_starts_s`` after it began,
    records 3 s and ends it. The payload's recording and the joined file."""
    a, a_clock = worker(spool, "worker-a")
    first = a.start("call_moved", options)
    assert first is not None
    await feed(first, a_clock, 4)
    entry = a.live_state("call_moved")
    assert entry is not None
    await a.let_go("call_moved")
    if lose_a:  # on another node's spool
        (spool / f"call_moved.{options.format}").unlink()
    entry = {**entry, "started_at": time.time() - b_starts_s}  # on the simulated clock
    b, b_clock = worker(spool, "worker-b")
    second = b.start("call_moved", options, Continued(1, entry, b_starts_s))
    assert second is not None
    assert second.live_state()["parts"][1]["file"] == f"call_moved.g1.{options.format}"
    await feed(second, b_clock, 3)
    payload = await b.finish("call_moved")
    assert payload is not None
    whole = spool / f"call_moved.whole.{options.format}"
    assert names(spool) == [whole.name]  # the parts went in
    assert b.local.find("call_moved") == whole
    return payload, whole


async def test_an_mp3_call_moved_after_a_gap_is_one_file_with_silence_in_the_gap(
    tmp_path: Path,
) -> None:
    require_binary("ffmpeg", "apt-get install ffmpeg")
    payload, whole = await moved(tmp_path, MP3, b_starts_s=6.0)
    assert payload["format"] == "mp3"
    assert [(p["worker"], p["joined"]) for p in payload["parts"]] == [
        ("worker-a", True),
        ("worker-b", True),
    ]
    assert payload["parts"][1]["start_s"] == pytest.approx(6.0, abs=0.05)
    assert payload["duration_s"] == pytest.approx(9.0, abs=0.1)
    loud = loudness(whole) > 300
    assert len(loud) / 10 == pytest.approx(9.0, abs=0.2)
    assert loud[2:38].mean() > 0.6 and loud[62:88].mean() > 0.6  # the speech, both parts
    assert not loud[41:59].any()  # the move's two seconds: silence


async def test_a_part_that_overlaps_the_next_is_cut_where_the_next_begins(
    tmp_path: Path,
) -> None:
    payload, whole = await moved(tmp_path, WAV, b_starts_s=3.0)
    assert payload["duration_s"] == pytest.approx(6.0, abs=0.1)
    _, (left, _) = read_channels(whole.read_bytes())
    assert len(left) / RATE == pytest.approx(6.0, abs=0.1)


async def test_a_part_not_on_this_spool_is_listed_and_silent(tmp_path: Path) -> None:
    payload, whole = await moved(tmp_path, WAV, b_starts_s=5.0, lose_a=True)
    assert [(p["file"], p["joined"]) for p in payload["parts"]] == [
        ("call_moved.wav", False),
        ("call_moved.g1.wav", True),
    ]
    _, (left, _) = read_channels(whole.read_bytes())
    assert len(left) / RATE == pytest.approx(8.0, abs=0.1)
    assert not np.abs(left[: 5 * RATE]).any()  # where A's part would be
    assert np.abs(left[5 * RATE + RATE // 2 :]).mean() > 100


async def test_a_live_state_naming_files_of_no_part_of_the_call_never_touches_them(
    tmp_path: Path,
) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    other = spool / "call_other.wav"  # another call's, unheld
    other.write_bytes(b"RIFF")
    outside = tmp_path / "outside.wav"
    outside.write_bytes(b"RIFF")
    b, clock = worker(spool, "worker-b")
    entry = {
        "started_at": time.time() - 2.0,
        "parts": [
            {"file": "call_other.wav", "worker": "worker-a", "start_s": 0.0},
            {"file": "../outside.wav", "worker": "worker-a", "start_s": 1.0},
        ],
    }
    recording = b.start("call_moved", WAV, Continued(1, entry, 2.0))
    assert recording is not None
    await feed(recording, clock, 1)
    payload = await b.finish("call_moved")
    assert payload is not None
    assert [p["joined"] for p in payload["parts"]] == [False, False, True]
    assert other.read_bytes() == outside.read_bytes() == b"RIFF"


@pytest.mark.parametrize("options", [WAV, MP3], ids=["wav", "mp3"])
async def test_a_part_let_go_is_taken_back_whole_when_its_call_ends_here(
    tmp_path: Path, options: RecordingOptions
) -> None:
    """A Vonage caller's hang-up: the socket closes first, so the call is handed off and
    its part let go; then the network's ``completed`` ends the call on this very worker.
    Its recording is one file again, not a part left for a sweep (seen as a webhook with
    no recording, one run in four)."""
    if options is MP3:
        require_binary("ffmpeg", "apt-get install ffmpeg")
    a, clock = worker(tmp_path, "worker-a")
    recording = a.start("call_hungup", options)
    assert recording is not None
    await feed(recording, clock, 3)
    await a.let_go("call_hungup")
    payload = await a.finish("call_hungup")
    assert payload is not None and "parts" not in payload
    assert abs(payload["duration_s"] - 3.0) < 0.1
    assert names(tmp_path) == [f"call_hungup.{options.format}"]
    assert a.local.find("call_hungup") == tmp_path / f"call_hungup.{options.format}"
    await a.close()  # and a drain does not upload it again as a part left behind


async def test_a_part_another_worker_took_on_is_not_taken_back(tmp_path: Path) -> None:
    a, clock = worker(tmp_path, "worker-a")
    recording = a.start("call_moved", WAV)
    assert recording is not None
    await feed(recording, clock, 2)
    entry = a.live_state("call_moved")
    await a.let_go("call_moved")
    b, _ = worker(tmp_path, "worker-b")
    assert b.start("call_moved", WAV, Continued(1, entry, 2.0)) is not None  # claims A's part
    assert await a.finish("call_moved") is None
    payload = await b.finish("call_moved")  # B joins it
    assert payload is not None and [p["joined"] for p in payload["parts"]] == [True, True]
