"""The first hour of a new user (issue 17): what ``telephony-edge serve`` says when it starts.

A busy SIP port or RTP range is one line and an exit status, like a busy
HTTP port, and whatever had started is released; the start-up banner says
which networks are on (and how to turn one on when none is); the ffmpeg
warning comes only when a configured recording format needs ffmpeg.
Real ``serve`` processes where the output is what is tested; in-process
``serve()`` where what is tested is what it leaves behind.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from telephony_edge.app import serve
from telephony_edge.banner import banner_lines, network_lines
from telephony_edge.config import Settings
from telephony_edge.config_loading import load_settings
from telephony_edge.errors import ListenError, UserError
from telephony_edge.recording.recorder import ffmpeg_warning
from telephony_edge.sip.provider import SipListenError
from tests.conftest import free_port

KEY = "startup-private-key-0001"
BANNER = "serving on"


@dataclass
class Run:
    """A ``serve`` process's exit status (None: it was running, then stopped) and output."""

    status: int | None
    stdout: str
    stderr: str


def run_serve(config: dict[str, Any], directory: Path, env: dict[str, str] | None = None) -> Run:
    """``telephony-edge serve --config`` until it exits or prints its banner (then SIGTERM)."""
    path = directory / f"edge-{time.monotonic_ns()}.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    out, err = path.with_suffix(".out"), path.with_suffix(".err")
    with out.open("wb") as stdout, err.open("wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "telephony_edge", "serve", "--config", str(path)],
            stdout=stdout,
            stderr=stderr,
            env={**os.environ, **(env or {})},
        )
    status: int | None = None
    deadline = time.monotonic() + 30
    try:
        while (status := process.poll()) is None and BANNER not in out.read_text():
            assert time.monotonic() < deadline, f"serve neither started nor exited: {err}"
            time.sleep(0.05)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(15)
    return Run(status, out.read_text(), err.read_text())


def sip_config(sip_port: int, **sip: Any) -> dict[str, Any]:
    return {
        "server": {"host": "127.0.0.1", "port": free_port()},
        "api": {"private_key": KEY},
        "sip": {"enabled": True, "bind_host": "127.0.0.1", "port": sip_port, **sip},
    }


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port another process holds over UDP and TCP (both, as SIP listens on both)."""
    for _ in range(50):
        tcp, udp = socket.socket(), socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        port = free_port()
        try:
            tcp.bind(("127.0.0.1", port))
            udp.bind(("127.0.0.1", port))
        except OSError:
            tcp.close()
            udp.close()
            continue
        tcp.listen()
        try:
            yield port
        finally:
            tcp.close()
            udp.close()
        return
    pytest.fail("no port free for both UDP and TCP")


def assert_one_line(run: Run, *needles: str) -> None:
    """Failed, and said why on one line of stderr: no traceback, nothing left unclosed."""
    everything = run.stdout + run.stderr
    assert run.status not in (None, 0), everything
    assert "Traceback" not in everything and "Unclosed" not in everything, everything
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_a_busy_sip_port_is_one_line_and_the_exit_status_of_a_busy_http_port(
    busy_port: int, tmp_path: Path
) -> None:
    http_busy = run_serve({"server": {"host": "127.0.0.1", "port": busy_port}}, tmp_path)
    assert_one_line(http_busy, f"127.0.0.1:{busy_port}", "address already in use")

    sip_busy = run_serve(sip_config(busy_port), tmp_path)
    assert_one_line(sip_busy, "SIP", f"127.0.0.1:{busy_port}", "address already in use", "sip.port")
    assert sip_busy.status == http_busy.status
    assert sip_busy.stdout == ""  # no banner: it never served


# -- in-process: what a failed start leaves behind ----------------------------------


def _settings(config: dict[str, Any]) -> Settings:
    return load_settings(None, **config)


async def _serve_fails(settings: Settings) -> tuple[UserError, list[str]]:
    """Run ``serve`` to its failure; the error and what the loop reports left unclosed."""
    loop = asyncio.get_running_loop()
    reported: list[str] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: reported.append(str(context["message"])))
    try:
        with pytest.raises(UserError) as failed:
            await asyncio.wait_for(serve(settings), 20)  # it must not start serving
        gc.collect()  # an unclosed aiohttp session says so when it is collected
        await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(previous)
    return failed.value, reported


def _other_tasks() -> set[asyncio.Task[Any]]:
    return {task for task in asyncio.all_tasks() if task is not asyncio.current_task()}


async def test_a_failed_sip_start_stops_what_had_started(busy_port: int) -> None:
    settings = _settings(sip_config(busy_port))
    error, reported = await _serve_fails(settings)
    assert isinstance(error, SipListenError) and str(busy_port) in str(error)
    assert not [r for r in reported if "Unclosed" in r], reported  # the HTTP client session
    await asyncio.sleep(0.05)  # tasks cancelled by the clean-up finish
    assert not _other_tasks()  # heartbeat, reapers, webhook queue: stopped


async def test_a_busy_http_port_releases_the_sip_listeners_started_before_it(
    busy_port: int,
) -> None:
    sip_port = free_port()
    config = sip_config(sip_port)
    config["server"]["port"] = busy_port
    error, reported = await _serve_fails(_settings(config))
    assert isinstance(error, ListenError) and str(busy_port) in str(error)
    assert not [r for r in reported if "Unclosed" in r], reported
    with socket.socket() as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        tcp.bind(("127.0.0.1", sip_port))  # SIP's TCP and UDP sockets are closed
        udp.bind(("127.0.0.1", sip_port))
    await asyncio.sleep(0.05)
    assert not _other_tasks()


async def test_an_rtp_range_held_by_another_process_fails_the_start_in_one_line() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
        for _ in range(50):  # an even port with its odd neighbour: a range of one RTP port
            port = free_port() & ~1
            try:
                holder.bind(("127.0.0.1", port))
            except OSError:
                continue
            break
        settings = _settings(sip_config(0, rtp_port_min=port, rtp_port_max=port + 1))
        error, reported = await _serve_fails(settings)
    message = str(error)
    assert f"RTP port of 127.0.0.1:{port}-{port + 1}" in message, message
    assert "\n" not in message and "sip.rtp_port_min" in message
    assert not [r for r in reported if "Unclosed" in r], reported
    await asyncio.sleep(0.05)
    assert not _other_tasks()


# -- the banner of the default edge (``scripts/run.sh``), without ffmpeg -------------


@pytest.fixture(scope="module")
def default_edge(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """``serve`` on the embedded defaults, as ``run.sh`` starts it, on a PATH without ffmpeg."""
    directory = tmp_path_factory.mktemp("default-edge")
    empty = directory / "bin"
    empty.mkdir()
    config = {"server": {"host": "127.0.0.1", "port": free_port()}}
    run = run_serve(config, directory, env={"PATH": str(empty)})
    assert run.status is None, run.stderr  # it served
    return run


def test_the_default_edge_says_no_network_is_enabled_and_how_to_enable_one(
    default_edge: Run,
) -> None:
    lines = [line.strip() for line in default_edge.stdout.splitlines()]
    networks = [line for line in lines if line.startswith("networks:")]
    assert networks == [
        "networks: none enabled (twilio, vonage, sip, webrtc are all off): "
        "no call can reach this edge"
    ]
    how = lines[lines.index(networks[0]) + 1]
    assert "<network>.enabled: true" in how and "--config deploy/demo.yaml" in how


def test_no_ffmpeg_warning_when_nothing_records_in_a_format_that_needs_it(
    default_edge: Run,
) -> None:
    everything = default_edge.stdout + default_edge.stderr
    assert "ffmpeg" not in everything.lower(), everything


def test_the_banner_names_the_enabled_networks_and_those_off() -> None:
    assert network_lines(["twilio", "sip"]) == ["networks: twilio, sip (off: vonage, webrtc)"]
    every = ["twilio", "vonage", "sip", "webrtc"]
    assert network_lines(every) == ["networks: twilio, vonage, sip, webrtc"]
    demo = load_settings(str(Path(__file__).parents[1] / "deploy" / "demo.yaml"))
    assert "  networks: twilio, vonage, sip, webrtc" in banner_lines(demo, "http://127.0.0.1:1")


def _recording(fmt: str) -> Settings:
    agents = {"sales": {"recording": {"enabled": True, "format": fmt}}, "support": {}}
    return load_settings(None, agents=agents)


def test_ffmpeg_warning_only_for_a_configured_format_that_needs_it() -> None:
    missing: Any = lambda name: None  # noqa: E731
    present: Any = lambda name: f"/usr/bin/{name}"  # noqa: E731
    warning = ffmpeg_warning(_recording("mp3"), which=missing)
    assert warning is not None
    assert "agents.sales.recording.format" in warning and "mp3" in warning
    assert ffmpeg_warning(_recording("ogg"), which=missing) is not None
    assert ffmpeg_warning(_recording("wav"), which=missing) is None
    assert ffmpeg_warning(load_settings(None), which=missing) is None
    assert ffmpeg_warning(_recording("mp3"), which=present) is None
    # a number's own agent_config counts too
    numbers = {
        "+15555550100": {
            "provider": "twilio",
            "agent_id": "support",
            "region": "r",
            "agent_config": {"recording": {"format": "ogg"}},
        }
    }
    routed = load_settings(
        None,
        api={"private_key": KEY},
        agents={"support": {}},
        regions={"r": {"public_url": "http://127.0.0.1"}},
        numbers=numbers,
        twilio={"enabled": True, "account_sid": "AC" + "0" * 32, "auth_token": "t" * 32},
    )
    warning = ffmpeg_warning(routed, which=missing)
    assert warning is not None and "numbers.+15555550100.agent_config.recording" in warning


def test_the_banner_carries_the_ffmpeg_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("telephony_edge.recording.recorder.shutil.which", lambda name: None)
    lines = banner_lines(_recording("mp3"), "http://127.0.0.1:1")
    assert any(line.startswith("  warning: ffmpeg is not installed") for line in lines), lines
    assert not any("ffmpeg" in line for line in banner_lines(_recording("wav"), "http://x:1"))
