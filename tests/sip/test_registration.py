"""The edge registers an account (``sip.accounts``) with a real registrar, Kamailio (registrar
and usrloc, digest against a fixed password); a baresip caller calls the account's address
of record through Kamailio and reaches the agent of the account's number. Kamailio
restarted (its bindings lost): the edge registers again and calls reach it again. Two
workers on one Redis: one registration, and the other takes it over when its holder stops.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from telephony_edge.config_loading import load_settings
from telephony_edge.sip.provider import SIP_ENDPOINT
from tests.conftest import Edge, Receiver, free_port, wait_for
from tests.sip.baresip import baresip_binary, dial
from tests.sip.conftest import API_KEY, sip_test_settings
from tests.sip.kamailio_registrar import Registrar, start_registrar

NUMBER = "+15550100"
NUMBERS = {NUMBER: {"provider": "sip", "agent_id": "echo", "region": "local"}}
REGIONS = {"local": {"public_url": "http://127.0.0.1:8080"}}


def account(registrar: Registrar, **more: Any) -> dict[str, Any]:
    return {
        "pbx": {
            "registrar": f"127.0.0.1:{registrar.port}",
            "username": "1001",
            "password": "s3cret",
            "number": NUMBER,
            "expires_s": 10,
            "retry_min_s": 0.5,
            "retry_max_s": 2.0,
            **more,
        }
    }


async def status_rows(edge: Edge) -> list[dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            str(edge.url("/status")),
            params={"format": "json"},
            headers={"Authorization": f"Bearer {API_KEY}"},
        ) as resp,
    ):
        assert resp.status == 200
        rows: list[dict[str, Any]] = (await resp.json())["tables"].get("sip_accounts", [])
        return rows


async def registered(edge: Edge, within: float = 15.0) -> dict[str, Any]:
    """Until /status says this worker holds the account's binding; its row."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        [row] = await status_rows(edge)
        if row["state"] == "registered":
            return row
        assert loop.time() < deadline, f"not registered: {row}"
        await asyncio.sleep(0.1)


async def call_through(registrar: Registrar, within: Path, receiver: Receiver) -> dict[str, Any]:
    """baresip calls the address of record at Kamailio; the end-of-call webhook."""
    folder = Path(tempfile.mkdtemp(dir=within))  # baresip's config and recordings
    before = len(receiver.received)
    call = await dial(f"sip:1001@127.0.0.1:{registrar.port}", folder, "udp", seconds=6)
    assert "Call established" in call.log, call.log[-3000:]
    assert call.heard_seconds() > 0.5, f"baresip heard {call.heard_seconds()} s of the agent"
    await wait_for(lambda: len(receiver.received) > before, within=15)
    payload: dict[str, Any] = receiver.received[-1]
    return payload


async def test_registered_account_takes_calls_and_registers_again_after_a_restart(
    make_edge: Callable[..., Any], receiver: Receiver, tmp_path: Path
) -> None:
    baresip_binary()
    registrar = await start_registrar(tmp_path, "s3cret")
    try:
        settings = sip_test_settings(
            receiver, {"accounts": account(registrar)}, regions=REGIONS, numbers=NUMBERS
        )
        edge: Edge = await make_edge(settings)
        row = await registered(edge)
        assert row["holder"] == edge.services.worker_id and row["aor"] == "sip:1001@127.0.0.1"
        assert 0 < row["expires_in_s"] <= 10 and row["number"] == NUMBER
        port = edge.app[SIP_ENDPOINT].port
        [contact, *_] = registrar.registers()
        assert f"@127.0.0.1:{port};transport=udp" in contact and "acct-" in contact
        metrics = await _metrics(edge)
        assert 'telephony_edge_sip_registration_up{account="pbx"} 1.0' in metrics

        payload = await call_through(registrar, tmp_path, receiver)
        assert payload["call_status"] == "user-ended"
        assert "caller spoke" in json.dumps(payload.get("chat"))  # the agent heard baresip
        record = await edge.services.call_service.get(payload["call_id"])
        assert record is not None and record.to == NUMBER and record.direction == "inbound"

        await registrar.restart()  # every binding forgotten (usrloc keeps them in memory only)
        # the refresh registers again (it may already have, a refresh comes every ~5 s)
        await wait_for(lambda: registrar.registers(), within=15)
        payload = await call_through(registrar, tmp_path, receiver)
        assert payload["call_status"] == "user-ended"

        # the only worker stops: it takes its binding off the registrar
        await edge.server.close()
        [removed] = registrar.removals()
        assert f"@127.0.0.1:{port};transport=udp" in removed
    finally:
        await registrar.stop()


async def test_wrong_password_backs_off_and_says_so(
    make_edge: Callable[..., Any], receiver: Receiver, tmp_path: Path
) -> None:
    registrar = await start_registrar(tmp_path, "s3cret")
    try:
        settings = sip_test_settings(
            receiver,
            {"accounts": account(registrar, password="wrong")},
            regions=REGIONS,
            numbers=NUMBERS,
        )
        edge: Edge = await make_edge(settings)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while (row := (await status_rows(edge))[0])["state"] != "backoff":
            assert loop.time() < deadline, row
            await asyncio.sleep(0.1)
        assert "credentials were refused" in row["reason"] and row["expires_in_s"] is None
        assert registrar.registers() == []
        assert 'telephony_edge_sip_registration_up{account="pbx"} 0.0' in await _metrics(edge)
    finally:
        await registrar.stop()


async def test_one_worker_of_two_registers_and_the_other_takes_over(
    make_edge: Callable[..., Any], receiver: Receiver, redis_server: Any, tmp_path: Path
) -> None:
    registrar = await start_registrar(tmp_path, "s3cret")
    prefix = f"te-reg-{uuid.uuid4().hex[:12]}:"
    edges: list[Edge] = []
    try:
        for name in ("worker-a", "worker-b"):
            rtp_low = free_port() // 2 * 2
            settings = load_settings(
                None,
                server={"worker_id": name},
                api={"private_key": API_KEY},
                coordination={"redis_url": redis_server.url, "key_prefix": prefix},
                calls={"lease_s": 1.0, "lease_renew_s": 0.2},
                sip={
                    "enabled": True,
                    "port": 0,
                    "rtp_port_min": rtp_low,
                    "rtp_port_max": rtp_low + 20,
                    "accounts": account(registrar),
                },
                agents={"echo": {"prompt": "You echo."}},
                regions=REGIONS,
                numbers=NUMBERS,
            )
            edges.append(await make_edge(settings))
        await wait_for(lambda: registrar.registers(), within=10)
        await asyncio.sleep(1.0)  # both have tried their leases several times
        rows = [(await status_rows(edge))[0] for edge in edges]
        holder = rows[0]["holder"]
        assert holder in ("worker-a", "worker-b") and rows[1]["holder"] == holder
        states = [row["state"] for row in rows]
        assert sorted(states, key=str) == sorted(["registered", None], key=str)
        held, other = (0, 1) if rows[0]["state"] == "registered" else (1, 0)
        ports = [edge.app[SIP_ENDPOINT].port for edge in edges]
        assert all(f":{ports[held]};" in contact for contact in registrar.registers())

        await edges[held].server.close()  # a graceful stop: the lease goes, no unregister
        row = await registered(edges[other], within=10)
        assert row["holder"] == edges[other].services.worker_id
        assert any(f":{ports[other]};" in contact for contact in registrar.registers())
        # the new holder removes the old one's binding (another address, the same user)
        await wait_for(lambda: registrar.removals(), within=5)
        [removed] = registrar.removals()
        assert f":{ports[held]};" in removed
    finally:
        await registrar.stop()


async def _metrics(edge: Edge) -> str:
    async with aiohttp.ClientSession() as http, http.get(str(edge.url("/metrics"))) as resp:
        return await resp.text()
