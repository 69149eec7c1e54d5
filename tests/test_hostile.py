"""Hostile input against a real ``telephony-edge serve``: the protocol's answer, never a 500.

One process is shared by the module (Twilio on, signatures checked, an API
key, a webhook secret). Every test sends what a hostile run sent, asserts the
status or close code, and that the process is still serving with no
traceback and no ERROR line in its log.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from telephony_edge.twilio.signature import SIGNATURE_HEADER, compute_signature
from tests.conftest import ServeProcess, free_port
from tests.twilio.harness import (
    ACCOUNT_SID,
    API_KEY,
    AUTH_TOKEN,
    CALLER,
    LOCAL_NUMBER,
    OUTBOUND_NUMBER,
    WEBHOOK_SECRET,
)

FAKE_TWILIO_PORT = free_port()


def hostile_config(**webhooks: Any) -> dict[str, Any]:
    """Like ``deploy/demo.yaml``, with every protection on."""
    return {
        "server": {"drain_grace_s": 1},
        "api": {"private_key": API_KEY},
        "twilio": {
            "enabled": True,
            "account_sid": ACCOUNT_SID,
            "auth_token": AUTH_TOKEN,
            "api_base_url": f"http://127.0.0.1:{FAKE_TWILIO_PORT}",
            "validate_signatures": True,
        },
        "webhooks": {"signing_secret": WEBHOOK_SECRET, "backoff_base_s": 0.05, **webhooks},
        "agents": {"demo": {"prompt": "You are the demo agent.", "first_message": "Hello."}},
        "regions": {"local": {"public_url": "http://127.0.0.1"}},
        "numbers": {
            LOCAL_NUMBER: {"provider": "twilio", "agent_id": "demo", "region": "local"},
            OUTBOUND_NUMBER: {"provider": "twilio", "agent_id": "demo", "region": "local"},
        },
    }


@pytest.fixture(scope="module")
def edge(serve_process: Any) -> ServeProcess:
    started: ServeProcess = serve_process(hostile_config())
    return started


@pytest.fixture(name="session")
async def fixture_session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def bad_input(edge: ServeProcess, source: str) -> float:
    return edge.metric("telephony_edge_bad_input_total", source=source)


# -- 1. the voice webhook parses its body only after the signature header is there --


VOICE_FIELDS = {"CallSid": "CA" + "0" * 32, "From": CALLER, "To": LOCAL_NUMBER}


def _signed(edge: ServeProcess) -> dict[str, str]:
    url = edge.base_url + "/twilio/voice"
    return {SIGNATURE_HEADER: compute_signature(AUTH_TOKEN, url, VOICE_FIELDS)}


@pytest.mark.parametrize(
    ("content_type", "body", "signed", "status"),
    [
        ("application/x-www-form-urlencoded", b"To=%FF%FE&From=\xff\xfe", False, 403),
        ("application/x-www-form-urlencoded; charset=bogus", b"To=1", False, 403),
        ("multipart/form-data", b"--x\r\n", False, 403),
        ("application/x-www-form-urlencoded", b"To=%FF%FE&From=\xff\xfe", True, 400),
        ("application/x-www-form-urlencoded; charset=bogus", b"To=1", True, 400),
        ("multipart/form-data", b"--x\r\n", True, 400),
        ("multipart/form-data; boundary=x", b"garbage", True, 400),
        ("application/x-www-form-urlencoded; charset=utf-16", b"To=1", True, 403),
    ],
)
async def test_voice_webhook_bad_bodies_get_403_or_400(
    edge: ServeProcess,
    session: aiohttp.ClientSession,
    content_type: str,
    body: bytes,
    signed: bool,
    status: int,
) -> None:
    source = "twilio-webhook" if status == 400 else "twilio-signature"
    before = bad_input(edge, source)
    headers = {"Content-Type": content_type, **(_signed(edge) if signed else {})}
    async with session.post(edge.base_url + "/twilio/voice", data=body, headers=headers) as resp:
        assert resp.status == status
    assert bad_input(edge, source) == before + 1
    edge.assert_healthy()
