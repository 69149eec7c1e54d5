"""examples/meeting_bot.py, run as a user runs it, joins the demo agent on a real ``serve``."""

from __future__ import annotations

import asyncio
import audioop
import signal
import sys
import uuid
import wave
from pathlib import Path
from typing import Any

from tests.conftest import (
    Receiver,
    ServeProcess,
    start_serve_process,
    stop_serve_process,
    wait_for,
)
from tests.webrtc.test_offer import API_KEY
from tests.webrtc.test_widget_browser import SPEECH, widget_config

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "meeting_bot.py"


def voiced_seconds(path: Path) -> float:
    """How much of a recording is louder than background (20 ms windows)."""
    with wave.open(str(path)) as wav:
        width, rate, channels = wav.getsampwidth(), wav.getframerate(), wav.getnchannels()
        pcm = wav.readframes(wav.getnframes())
    step = width * channels * rate // 50
    windows = [pcm[i : i + step] for i in range(0, len(pcm) - step + 1, step)]
    return sum(audioop.rms(w, width) > 300 for w in windows) * 0.02


async def test_the_meeting_bot_talks_with_the_agent_and_records_it(
    serve_process: Any, receiver: Receiver, tmp_path: Path
) -> None:
    edge: ServeProcess = serve_process(widget_config(receiver))
    heard = tmp_path / "heard.wav"
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, str(EXAMPLE), "--edge", edge.base_url, "--key", API_KEY),
        *("--agent-id", "demo", "--play", str(SPEECH)),
        *("--record", str(heard), "--seconds", "10"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    text = out.decode()
    assert proc.returncode == 0, text
    assert "connection connected" in text and "hung up" in text, text
    assert "transcript: [caller spoke" in text and "response_text: " in text, text  # captions
    # the end of the chime and the echo of the speech (2.3 s, with its pauses)
    assert voiced_seconds(heard) > 1.5, text
    await wait_for(lambda: receiver.received, within=10)
    [payload] = receiver.received
    assert payload["call_status"] == "user-ended", payload
    assert payload["metadata"] == {"bot": "meeting_bot"}
    assert "caller spoke" in payload["chat"]
    assert payload["call_id"] in text
    edge.assert_healthy()


async def test_the_meeting_bot_s_call_goes_on_when_its_worker_is_killed(
    redis_server: Any, receiver: Receiver, tmp_path: Path
) -> None:
    """Given both workers' URLs, the bot re-offers to B with the call's resume token once A
    is SIGKILLed, and the call goes on: one webhook, with the move (issue 24)."""
    prefix = f"te-bot-{uuid.uuid4().hex[:12]}:"
    workers = []
    for name in ("a", "b"):
        config = widget_config(receiver)
        config.update(
            server={"worker_id": f"worker-{name}"},
            coordination={"redis_url": redis_server.url, "key_prefix": prefix},
            calls={**config["calls"], "live_state_interval_s": 0.2},
        )
        workers.append(await asyncio.to_thread(start_serve_process, config, tmp_path / name))
    a, b = workers
    heard = tmp_path / "heard.wav"
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, str(EXAMPLE), "--edge", a.base_url, "--edge", b.base_url),
        *("--key", API_KEY, "--agent-id", "demo", "--play", str(SPEECH)),
        *("--record", str(heard), "--seconds", "8"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        assert proc.stdout is not None
        first = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
        assert first.startswith("call "), first
        await asyncio.sleep(2.0)  # mid-call, the live state written
        a.process.send_signal(signal.SIGKILL)
        out = first + (await asyncio.wait_for(proc.stdout.read(), 30)).decode()
        await proc.wait()
        await wait_for(lambda: receiver.received, within=10)  # B sends it before it stops
        await asyncio.sleep(1.0)  # a second webhook would come by now
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        for worker in workers:
            await asyncio.to_thread(stop_serve_process, worker)
    assert proc.returncode == 0, out
    call_id = first.split()[1]
    assert f"call {call_id} resumed" in out and "hung up" in out, out
    [payload] = receiver.received
    assert payload["call_id"] == call_id and payload["call_status"] == "user-ended", payload
    [move] = payload["migrations"]
    assert (move["from_worker"], move["to_worker"], move["cause"]) == (
        "worker-a",
        "worker-b",
        "crash",
    )
    assert voiced_seconds(heard) > 1.0, out
