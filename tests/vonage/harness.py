"""Fixtures for Vonage tests: an edge with Vonage enabled on real sockets, a CRM."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from telephony_edge.app import create_app, set_local_address
from telephony_edge.config import Settings
from telephony_edge.config_loading import load_settings
from telephony_edge.services import SERVICES, Services
from telephony_edge.vonage.context import VONAGE, VonageContext
from telephony_edge.vonage.simulator import SimulatedVonageCall
from tests.conftest import free_port
from tests.twilio.harness import Crm

SECRET = "vonage-signature-secret-for-tests-0001"
API_KEY = "private-api-key-for-tests-0001"
WEBHOOK_SECRET = "whsec_vonage_tests_0001"
LOCAL_NUMBER = "+15555550299"
EU_NUMBER = "+445555550288"
TWILIO_NUMBER = "+15555550211"
EU_PUBLIC_URL = "https://eu.edge.example.com"
CALLER = "+15555550100"
APPLICATION_ID = "aaaaaaaa-bbbb-4ccc-8ddd-0123456789ab"


@dataclass
class VonageEdge:
    server: TestServer
    app: web.Application
    port: int
    crm: Crm

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def services(self) -> Services:
        return self.app[SERVICES]

    @property
    def vonage(self) -> VonageContext:
        return self.app[VONAGE]

    def call(self, session: aiohttp.ClientSession, **kwargs: Any) -> SimulatedVonageCall:
        kwargs.setdefault("to", LOCAL_NUMBER)
        kwargs.setdefault("from_", CALLER)
        return SimulatedVonageCall(session, self.base, signature_secret=SECRET, **kwargs)


def vonage_settings(
    port: int, crm_url: str, *, vonage: dict[str, Any] | None = None, **overrides: Any
) -> Settings:
    section: dict[str, Any] = {"enabled": True, "signature_secret": SECRET, "ws_token_ttl_s": 30}
    section.update(vonage or {})
    base: dict[str, Any] = {
        "server": {
            "host": "127.0.0.1",
            "port": port,
            "public_url": f"http://127.0.0.1:{port}",
            "region": "us",
        },
        "api": {"private_key": API_KEY},
        "vonage": section,
        "webhooks": {
            "signing_secret": WEBHOOK_SECRET,
            "backoff_base_s": 0.05,
            "max_attempts": 3,
            "allow_private_targets": True,
        },
        "agents": {
            "echo": {
                "prompt": "You echo. Caller {FromPhone}.",
                "first_message": "Hi",
                "session_data_webhook": crm_url,
            },
        },
        "regions": {
            "us": {"public_url": f"http://127.0.0.1:{port}"},
            "eu": {"public_url": EU_PUBLIC_URL},
        },
        "numbers": {
            LOCAL_NUMBER: {"provider": "vonage", "agent_id": "echo", "region": "us"},
            EU_NUMBER: {"provider": "vonage", "agent_id": "echo", "region": "eu"},
        },
        "calls": {"inactivity_timeout_s": 30},
    }
    base.update(overrides)
    return load_settings(None, **base)


@pytest.fixture(name="make_vonage_edge")
async def fixture_make_vonage_edge(crm: Crm) -> AsyncIterator[Callable[..., Any]]:
    """Start edges with Vonage enabled on real sockets; stopped after the test."""
    servers: list[TestServer] = []

    async def start(**overrides: Any) -> VonageEdge:
        port = free_port()
        app = create_app(vonage_settings(port, crm.url, **overrides))
        server = TestServer(app, host="127.0.0.1", port=port)
        await server.start_server()
        set_local_address(app, "127.0.0.1", port)
        servers.append(server)
        return VonageEdge(server, app, port, crm)

    yield start
    for server in servers:
        await server.close()


@pytest.fixture(name="vonage_edge")
async def fixture_vonage_edge(make_vonage_edge: Callable[..., Any]) -> VonageEdge:
    edge: VonageEdge = await make_vonage_edge()
    return edge


def private_key_pem(tmp_path: Path) -> tuple[Path, bytes]:
    """A fresh RSA key for the application (written to a file) and its public key (PEM)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path = tmp_path / "private.key"
    path.write_bytes(pem)
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return path, public
