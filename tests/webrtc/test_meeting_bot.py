"""examples/meeting_bot.py, run as a user runs it, joins the demo agent on a real ``serve``."""

from __future__ import annotations

import asyncio
import audioop
import sys
import wave
from pathlib import Path
from typing import Any

from tests.conftest import Receiver, ServeProcess, wait_for
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
