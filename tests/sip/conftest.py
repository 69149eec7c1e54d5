"""Shared by the SIP tests on real sockets: the edge with SIP on, its webhook target,
sipp driven as a user would (``-sf sip/<scenario>.xml``, free ports, loopback only)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from telephony_edge.config import Settings
from telephony_edge.config_loading import load_settings
from telephony_edge.sip.provider import SIP_ENDPOINT
from tests.conftest import Edge, Receiver, ServeProcess, free_port, require_binary

SCENARIOS = Path(__file__).resolve().parents[2] / "sip"
API_KEY = "private-api-key-for-sip-tests-01"


def sipp_binary() -> str:
    return require_binary("sipp", "apt-get install -y sip-tester")


def sip_test_settings(
    receiver: Receiver, sip: dict[str, Any] | None = None, **more: Any
) -> Settings:
    """The SIP tests' configuration: SIP on a free port, agent ``echo`` reporting to
    ``receiver``; ``sip`` adds to the ``sip:`` section, ``more`` sets other sections."""
    rtp_low = free_port() // 2 * 2
    sip_section = {
        "enabled": True,
        "port": 0,
        "rtp_port_min": rtp_low,
        "rtp_port_max": rtp_low + 40,
    }
    return load_settings(
        None,
        api={"private_key": API_KEY},
        webhooks={
            "signing_secret": "whsec_sip_tests_0001",
            "allow_private_targets": True,
            "backoff_base_s": 0.05,
        },
        sip={**sip_section, **(sip or {})},
        agents={
            "echo": {
                "prompt": "You echo.",
                "first_message": "Hi",
                "session_data_webhook": receiver.url,
            }
        },
        calls={"inactivity_timeout_s": 30},
        **more,
    )


@pytest.fixture
async def sip_edge(make_edge: Callable[..., Any], receiver: Receiver) -> Edge:
    sipp_binary()
    edge: Edge = await make_edge(sip_test_settings(receiver))
    return edge


async def register(edge: Edge | ServeProcess, **body: Any) -> dict[str, Any]:
    """``POST /register_sip_call`` (agent ``echo`` unless ``body`` says) on an in-process
    edge or a ``serve`` process: its ``call_id`` and ``sip_uri``."""
    base = edge.base_url if isinstance(edge, ServeProcess) else str(edge.url("/"))[:-1]
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            base + "/register_sip_call",
            json={"agent_id": "echo", **body},
            headers={"Authorization": f"Bearer {API_KEY}"},
        ) as resp,
    ):
        assert resp.status == 200, await resp.text()
        data: dict[str, Any] = await resp.json()
        return data


async def sipp(
    edge: Edge,
    scenario: str,
    user: str,
    cwd: Path,
    *extra: str,
    host: str = "127.0.0.1",
    port: int | None = None,
) -> asyncio.subprocess.Process:
    """Start sipp against the edge's SIP port (the command line a user would type), from
    ``host`` (any 127.0.0.0/8 address is another source on loopback; ``::1`` calls the
    edge at ``[::1]``, over IPv6); ``port``: another one (a proxy in front of the edge)."""
    port = port or edge.app[SIP_ENDPOINT].port
    args = [
        f"[::1]:{port}" if ":" in host else f"127.0.0.1:{port}",
        "-sf", str(SCENARIOS / scenario),
        "-s", user,
        "-i", host, "-mi", host,
        "-p", str(free_port()), "-mp", str(free_port() // 2 * 2),
        "-m", "1", "-nostdin", "-timeout", "20", "-timeout_error",
        "-trace_err", "-error_file", str(cwd / "sipp_errors.log"),
        *extra,
    ]  # fmt: skip
    return await asyncio.create_subprocess_exec(
        sipp_binary(),
        *args,
        cwd=cwd,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )


async def finished(process: asyncio.subprocess.Process, cwd: Path) -> None:
    _, stderr = await asyncio.wait_for(process.communicate(), 30)
    errors = cwd / "sipp_errors.log"
    detail = errors.read_text(errors="replace")[-2000:] if errors.exists() else ""
    assert process.returncode == 0, f"sipp exit {process.returncode}: {stderr!r}\n{detail}"
