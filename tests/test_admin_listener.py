"""The operators' surface on a listener of its own (``server.admin_port``), over real sockets.

A real ``telephony-edge serve`` with ``admin_port`` set serves ``/metrics``,
``/status`` and (``admin_api``) the API there only, bound to ``admin_host``; its
main port answers them 404 and keeps the probes. Bound to 127.0.0.1, the admin
port refuses a connection to 127.0.0.2 (another loopback address of this
machine), which a wildcard bind would accept: the bind address is what is checked.
"""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from typing import Any

import pytest

from tests.conftest import ServeProcess, free_port, run_cli

API_KEY = "admin-listener-private-key-0001"
AUTH = {"Authorization": f"Bearer {API_KEY}"}


def get(url: str) -> tuple[int, str]:
    """Status and body of ``GET url`` with the private key."""
    request = urllib.request.Request(url, headers=AUTH)
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return int(resp.status), resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def edge_with_admin(serve_process: Any, admin_port: int, **server: Any) -> ServeProcess:
    config = {
        "server": {"admin_port": admin_port, "admin_host": "127.0.0.1", **server},
        "api": {"private_key": API_KEY},
    }
    edge: ServeProcess = serve_process(config)
    return edge


def test_admin_port_serves_metrics_status_and_the_api_the_main_port_does_not(
    serve_process: Any,
) -> None:
    admin_port = free_port()
    edge = edge_with_admin(serve_process, admin_port, admin_api=True)
    admin = f"http://127.0.0.1:{admin_port}"
    for path in ("/metrics", "/status?format=json", "/calls", "/webhooks/dead-letters"):
        assert get(edge.base_url + path)[0] == 404, path
    status, text = get(admin + "/metrics")
    assert status == 200 and "telephony_edge_calls_active" in text
    assert get(admin + "/status?format=json")[0] == 200
    assert get(admin + "/calls")[0] == 200
    assert get(admin + "/webhooks/dead-letters")[0] == 200
    for base in (edge.base_url, admin):  # the probes on both
        assert get(base + "/healthz")[0] == 200
        assert get(base + "/readyz")[0] == 200
    assert f"operators (/metrics, /status and the API): {admin}" in edge.log
    edge.assert_healthy()


def test_without_admin_api_the_api_stays_on_the_main_port(serve_process: Any) -> None:
    admin_port = free_port()
    edge = edge_with_admin(serve_process, admin_port)
    admin = f"http://127.0.0.1:{admin_port}"
    assert get(edge.base_url + "/calls")[0] == 200
    assert get(admin + "/calls")[0] == 404
    assert get(admin + "/metrics")[0] == 200
    assert get(edge.base_url + "/metrics")[0] == 404


def test_admin_port_bound_to_loopback_is_not_on_other_addresses(serve_process: Any) -> None:
    admin_port = free_port()
    edge = edge_with_admin(serve_process, admin_port)
    with socket.create_connection(("127.0.0.1", admin_port), timeout=5):
        pass
    # 127.0.0.2 reaches this machine too: a listener on 0.0.0.0 would accept it
    wildcard = socket.socket()
    wildcard.bind(("0.0.0.0", 0))
    wildcard.listen()
    with wildcard, socket.create_connection(("127.0.0.2", wildcard.getsockname()[1]), timeout=5):
        pass
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.2", admin_port), timeout=5).close()
    edge.assert_healthy()


def test_admin_settings_that_cannot_work_are_refused(tmp_path: Any) -> None:
    path = tmp_path / "edge.yaml"
    path.write_text("server: {port: 9000, admin_port: 9000, admin_host: 127.0.0.1}\n")
    done = run_cli("check-config", str(path))
    assert done.returncode == 2
    assert "server.admin_port: must differ from server.port" in done.stderr
    path.write_text("server: {admin_api: true}\n")
    done = run_cli("check-config", str(path))
    assert done.returncode == 2
    assert "server.admin_api: needs server.admin_port" in done.stderr
