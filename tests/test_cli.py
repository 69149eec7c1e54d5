"""The command line as users run it: real processes, one clear line for each mistake."""

from __future__ import annotations

import argparse
import asyncio
import audioop
import json
import signal
import socket
import sys
import time
import wave
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from telephony_edge import __version__
from telephony_edge.banner import banner_lines
from telephony_edge.cli import build_parser
from telephony_edge.twilio.simulator import write_wav_ulaw
from tests.conftest import FIXTURES, edge_settings, free_port, run_cli
from tests.twilio.harness import voiced_runs

TWILIO_ON = {
    "twilio": {"enabled": True, "account_sid": "AC" + "0" * 32, "auth_token": "t"},
    "api": {"private_key": "k" * 16},
}
SPEECH = FIXTURES / "speech_table.wav"
DEMO = Path(__file__).parent.parent / "deploy" / "demo.yaml"


async def test_agent_core_command_serves_the_protocol() -> None:
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "telephony_edge", "agent-core", "--port", str(port)),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(100):
                try:
                    ws = await http.ws_connect(f"ws://127.0.0.1:{port}/agent")
                    break
                except aiohttp.ClientError:
                    await asyncio.sleep(0.1)
            else:
                raise AssertionError("agent-core did not come up")
            initiate = {"agent": {"agent_id": "a", "agent_config": {}}, "metadata": {}}
            await ws.send_str(json.dumps({"method": "initiate", "data": initiate}))
            first = await ws.receive(timeout=5)
            assert json.loads(first.data)["method"] == "onready"
            audio = await ws.receive(timeout=5)
            while audio.type is aiohttp.WSMsgType.TEXT:
                audio = await ws.receive(timeout=5)
            assert audio.type is aiohttp.WSMsgType.BINARY and len(audio.data) % 640 == 0
            await ws.close()
    finally:
        proc.terminate()
        await proc.wait()


def one_line(stderr: str) -> str:
    """The error a user sees: exactly one line, no traceback."""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


def test_serve_on_a_busy_port_says_so_in_one_line() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = run_cli("serve", "--port", str(port))
    assert proc.returncode == 1
    assert one_line(proc.stderr) == (
        f"telephony-edge serve: error: cannot listen on 127.0.0.1:{port}: address already in "
        "use (another process uses it; stop that one or choose another --port)"
    )


SIMULATE = ("simulate", "twilio", "--to", "+15555550100")


@pytest.mark.parametrize(
    ("wav", "out", "error"),
    [
        ("missing.wav", "reply.wav", "--wav missing.wav: no such file"),
        ("README.md", "reply.wav", "--wav README.md: not a WAV file this can read"),
        (str(SPEECH), "no/such/folder/reply.wav", "--out no/such/folder/reply.wav: folder"),
    ],
)
def test_simulate_checks_its_files_before_calling(wav: str, out: str, error: str) -> None:
    # nothing listens at --url: a check after the call would wait for it first
    url = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    proc = run_cli(*SIMULATE, "--url", url, "--wav", wav, "--out", out, "--wait-ready", "20")
    assert time.monotonic() - started < 10
    assert proc.returncode == 2
    assert one_line(proc.stderr).startswith(f"telephony-edge simulate twilio: error: {error}")


def test_simulate_gives_up_on_an_edge_that_never_gets_ready(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    out = str(tmp_path / "reply.wav")
    proc = run_cli(
        *SIMULATE, "--url", url, "--wav", str(SPEECH), "--out", out, "--wait-ready", "0.5"
    )
    assert proc.returncode == 1
    assert one_line(proc.stderr) == (
        f"telephony-edge simulate twilio: error: the edge at {url} is not ready after 0.5 s "
        "(connection refused); is `telephony-edge serve` running there?"
    )


async def test_simulate_started_with_serve_waits_and_hears_the_whole_greeting(
    tmp_path: Path,
) -> None:
    """The README's try-a-call, in one go: the simulator starts before the edge listens."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    wav, out = tmp_path / "hello.wav", tmp_path / "reply.wav"
    write_wav_ulaw(wav, b"\xff" * 1600)  # 0.2 s of silence: the greeting is what we check
    simulate = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "telephony_edge", *SIMULATE, "--url", url),
        *("--auth-token", "demo_auth_token_not_secret", "--wav", str(wav), "--out", str(out)),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    serve = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "telephony_edge", "serve", "--config", str(DEMO)),
        *("--port", str(port)),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        stdout, stderr = await asyncio.wait_for(simulate.communicate(), 30)
    finally:
        serve.send_signal(signal.SIGTERM)
        banner, _ = await asyncio.wait_for(serve.communicate(), 30)
    assert simulate.returncode == 0, stderr.decode()
    summary = stdout.decode()
    assert ": streamed" in summary and "clears 0" in summary and "barge-in" not in summary
    with wave.open(str(out)) as heard:
        pcm = heard.readframes(heard.getnframes())
    chime = voiced_runs(audioop.lin2ulaw(pcm, 2))[0]
    assert chime[1] - chime[0] > 1.4, summary  # the whole greeting, not cut by the caller
    assert serve.returncode == 0
    webhook = "Twilio voice webhook (console: number > A call comes in > Webhook, HTTP POST): "
    assert f"{webhook}http://127.0.0.1:{port}/twilio/voice" in banner.decode()
    assert "is a loopback address, which twilio, vonage cannot reach" in banner.decode()


def test_version_and_help_for_every_option() -> None:
    proc = run_cli("--version")
    assert (proc.returncode, proc.stdout) == (0, f"telephony-edge {__version__}\n")
    missing = []
    parsers = [build_parser()]
    while parsers:
        parser = parsers.pop()
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                parsers.extend(action.choices.values())
            elif not action.help:
                missing.append(f"{parser.prog} {'/'.join(action.option_strings) or action.dest}")
    assert not missing


@pytest.mark.parametrize(
    ("overrides", "webhook", "warning"),
    [
        ({}, None, False),
        (TWILIO_ON, "http://127.0.0.1:8080/twilio/voice", True),
        (
            {**TWILIO_ON, "server": {"public_url": "https://edge.example.com"}},
            "https://edge.example.com/twilio/voice",
            False,
        ),
    ],
)
def test_banner_says_what_to_paste_into_twilio(
    overrides: dict[str, Any], webhook: str | None, warning: bool
) -> None:
    lines = banner_lines(edge_settings(**overrides), "http://127.0.0.1:8080")
    assert lines[0] == f"telephony-edge {__version__} serving on http://127.0.0.1:8080"
    demo = "  built-in demo agent core: ws://127.0.0.1:8080/_demo_agent (this edge's calls only)"
    assert demo in lines
    pasted = [line.rsplit(" ", 1)[1] for line in lines if "Twilio voice webhook" in line]
    assert pasted == ([webhook] if webhook else [])
    assert any("warning: public URL" in line for line in lines) is warning
