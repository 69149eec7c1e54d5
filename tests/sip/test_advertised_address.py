"""The SIP/RTP address a worker advertises: explicit, and never a private one by accident.

Through real ``telephony-edge serve`` processes (and ``check-config``, the same
loader): a private advertised address (a cloud node's own, RFC 1918) stops the
start with one line naming the setting, unless ``sip.private_advertised_host``
says it is deliberate; a wildcard bind with no advertised address too; the
address may come from a file (what a Kubernetes init container writes per node
or pod), and it is the one ``/register_sip_call`` hands out.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import ServeProcess, free_port, run_cli

API_KEY = "advertised-address-private-key-01"


def sip_config(**sip: Any) -> dict[str, Any]:
    rtp = free_port()
    return {
        "api": {"private_key": API_KEY},
        "agents": {"demo": {"prompt": "p"}},
        "sip": {
            "enabled": True,
            "bind_host": "127.0.0.1",
            "port": free_port(),
            "rtp_port_min": rtp,
            "rtp_port_max": rtp + 1,
            **sip,
        },
    }


def serve_refused(config: dict[str, Any], tmp_path: Path) -> str:
    """Run ``serve`` on ``config``: it must exit 2 at once; its stderr."""
    path = tmp_path / "edge.yaml"
    path.write_text(yaml.safe_dump(config))
    done = run_cli("serve", "--port", str(free_port()), "--config", str(path))
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    checked = run_cli("check-config", str(path))
    assert (
        checked.returncode == 2
        and checked.stderr.splitlines()[1:] == (done.stderr.splitlines()[1:])
    )
    return done.stderr


def sip_uri(edge: ServeProcess) -> str:
    request = urllib.request.Request(
        edge.base_url + "/register_sip_call",
        data=json.dumps({"agent_id": "demo"}).encode(),
        headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=5) as resp:
        return str(json.loads(resp.read())["sip_uri"])


def test_a_private_advertised_address_is_refused_at_start(tmp_path: Path) -> None:
    for private in ("10.0.3.17", "172.20.1.5", "192.168.1.20", "100.64.0.9"):
        stderr = serve_refused(sip_config(advertised_host=private), tmp_path)
        assert f"sip.advertised_host: {private} is a private address" in stderr, stderr
        assert "sip.private_advertised_host: true" in stderr
    # IPv6: ULA and link-local, on an IPv6 worker and as a dual-stack worker's second one
    for private in ("fd00::5", "fe80::1"):
        stderr = serve_refused(sip_config(bind_host="::1", advertised_host=private), tmp_path)
        assert f"sip.advertised_host: {private} is a private address" in stderr, stderr
        dual = sip_config(bind_host6="::1", advertised_host6=private)
        stderr = serve_refused(dual, tmp_path)
        assert f"sip.advertised_host6: {private} is a private address" in stderr, stderr


def test_an_ipv6_worker_advertises_its_address_in_brackets(serve_process: Any) -> None:
    """Loopback (``::1``, as ``127.0.0.1``) is this machine, not a private network."""
    edge = serve_process(sip_config(bind_host="::1"))
    assert "@[::1]:" in sip_uri(edge)
    edge = serve_process(sip_config(bind_host="::1", advertised_host="2001:db8::10"))
    assert "@[2001:db8::10]:" in sip_uri(edge)


def test_a_wildcard_bind_needs_an_advertised_address(tmp_path: Path) -> None:
    stderr = serve_refused(sip_config(bind_host="0.0.0.0"), tmp_path)
    assert "sip.advertised_host: required when sip.bind_host is a wildcard" in stderr, stderr
    stderr = serve_refused(sip_config(bind_host="::"), tmp_path)
    assert "sip.advertised_host: required when sip.bind_host is a wildcard" in stderr, stderr
    stderr = serve_refused(sip_config(bind_host6="::"), tmp_path)
    assert "sip.advertised_host6: required when sip.bind_host6 is a wildcard" in stderr, stderr


def test_a_deliberate_private_address_is_advertised(serve_process: Any) -> None:
    edge = serve_process(sip_config(advertised_host="10.0.3.17", private_advertised_host=True))
    assert "@10.0.3.17:" in sip_uri(edge)


def test_the_address_comes_from_a_file(serve_process: Any, tmp_path: Path) -> None:
    written = tmp_path / "public-address"
    written.write_text("203.0.113.7\n")  # as `kubectl get node -o jsonpath` writes it
    edge = serve_process(sip_config(advertised_host_file=str(written)))
    assert "@203.0.113.7:" in sip_uri(edge)


def test_a_file_without_a_public_address_is_refused(tmp_path: Path) -> None:
    written = tmp_path / "public-address"
    written.write_text("10.0.3.17")
    stderr = serve_refused(sip_config(advertised_host_file=str(written)), tmp_path)
    assert "sip.advertised_host: 10.0.3.17 is a private address" in stderr, stderr
    written.write_text("")  # the node has no annotation
    stderr = serve_refused(sip_config(advertised_host_file=str(written)), tmp_path)
    assert f"advertised_host_file: {written} holds no address" in stderr, stderr
    missing = tmp_path / "nothing-here"
    stderr = serve_refused(sip_config(advertised_host_file=str(missing)), tmp_path)
    assert f"advertised_host_file: cannot read {missing}" in stderr, stderr
