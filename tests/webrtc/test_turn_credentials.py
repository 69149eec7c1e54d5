"""The widget's TURN credentials expire, and the TURN server's secret never reaches a page.

A real coturn runs with ``use-auth-secret`` (the TURN REST API's shared secret). The
widget page's credentials get a relay allocation from it through aioice's TURN client;
the same credentials minted already expired, or the secret used as a password, do
not. A static TURN password in ``webrtc.browser_ice_servers`` is refused at start-up.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from aioice import stun
from aioice.turn import create_turn_endpoint

from telephony_edge.config_loading import ConfigError
from telephony_edge.webrtc.turn import rest_credentials
from tests.conftest import Edge, free_port, require_binary
from tests.webrtc.test_browser_path import browser_settings, request

SECRET = "coturn-shared-secret-for-tests"


@pytest.fixture
def coturn() -> Iterator[int]:
    """A private coturn on loopback with the TURN REST API's shared secret; its port."""
    binary = require_binary("turnserver", "apt-get install coturn")
    port = free_port()
    proc = subprocess.Popen(
        [
            binary, "-n", "--listening-ip=127.0.0.1", f"--listening-port={port}",
            "--relay-ip=127.0.0.1", "--min-port=49160", "--max-port=49200",
            "--use-auth-secret", f"--static-auth-secret={SECRET}", "--realm=edge.test",
            "--no-tls", "--no-dtls", "--no-cli", "--fingerprint", "--log-file=stdout",
            "--simple-log", "--allow-loopback-peers",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        time.sleep(0.5)  # coturn opens its UDP listener at once; give it a moment
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else b""
        yield port
    finally:
        proc.terminate()
        proc.wait(5)


async def allocate(port: int, username: str, password: str) -> tuple[str, int]:
    """A TURN allocation on the server at ``port``: the relayed address."""
    transport, _ = await asyncio.wait_for(
        create_turn_endpoint(
            asyncio.DatagramProtocol, ("127.0.0.1", port), username, password, lifetime=60
        ),
        10,
    )
    try:
        relayed: tuple[str, int] = transport.get_extra_info("related_address") or ("", 0)
        return relayed
    finally:
        transport.close()


async def test_the_widget_page_gets_turn_credentials_that_work_and_expire(
    make_edge: Callable[..., Any], coturn: int
) -> None:
    turn = {"urls": [f"turn:127.0.0.1:{coturn}?transport=udp"], "secret": SECRET}
    stun_server = {"urls": ["stun:stun.example.net:3478"]}
    edge: Edge = await make_edge(
        browser_settings(browser_ice_servers=[turn, stun_server], turn_credential_ttl_s=600)
    )
    status, _, html = await request(edge, "GET", "/widget?agent_id=public", key=None)
    assert status == 200
    assert SECRET not in html
    found = re.search(r'id="widget-config">(.*?)</script>', html)
    assert found is not None
    minted, stun_entry = json.loads(found.group(1))["iceServers"]
    assert stun_entry == stun_server
    expiry, _, user = minted["username"].partition(":")
    assert user == "widget" and 590 <= int(expiry) - time.time() <= 600
    await allocate(coturn, minted["username"], minted["credential"])  # coturn takes them

    expired = rest_credentials(SECRET, "widget", -30, time.time())
    with pytest.raises(stun.TransactionFailed):
        await allocate(coturn, expired.username, expired.credential)
    with pytest.raises(stun.TransactionFailed):  # the secret is no password
        await allocate(coturn, minted["username"], SECRET)


def test_a_static_turn_password_for_the_browser_is_refused() -> None:
    static = {"urls": ["turn:turn.example.net:3478"], "username": "u", "credential": "p"}
    with pytest.raises(ConfigError, match="shared secret"):
        browser_settings(browser_ice_servers=[static])
    with pytest.raises(ConfigError, match="TURN servers"):
        browser_settings(browser_ice_servers=[{"urls": ["stun:s.example"], "secret": SECRET}])
