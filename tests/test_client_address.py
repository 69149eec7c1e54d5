"""The client behind trusted proxies (:mod:`telephony_edge.client_address`): the walk itself.

Over real sockets, behind Caddy: tests/webrtc/test_behind_proxy.py.
"""

from __future__ import annotations

import pytest

from telephony_edge.client_address import MAX_HOPS, TrustedProxies, parse_node
from telephony_edge.config_loading import ConfigError, load_settings

PROXIES = TrustedProxies.parse(["10.0.0.0/8", "2001:db8:1::/48"], "x-forwarded-for")


@pytest.mark.parametrize(
    ("node", "address"),
    [
        ("192.0.2.1", "192.0.2.1"),
        (" 192.0.2.1:4711 ", "192.0.2.1"),
        ("2001:db8::1", "2001:db8::1"),
        ("[2001:db8::1]:4711", "2001:db8::1"),
        ("[2001:db8::1]", "2001:db8::1"),
        ("::ffff:192.0.2.1", "192.0.2.1"),
        ("unknown", None),
        ("_hidden", None),
        ("", None),
        ("[2001:db8::1", None),
        ("192.0.2.1:80:80", None),
    ],
)
def test_a_hop_is_an_address_or_nothing(node: str, address: str | None) -> None:
    parsed = parse_node(node)
    assert (None if parsed is None else str(parsed)) == address


@pytest.mark.parametrize(
    ("peer", "chain", "client"),
    [
        # an untrusted peer is the client whatever it writes
        ("192.0.2.9", ["198.51.100.1"], "192.0.2.9"),
        # a trusted proxy names its client
        ("10.1.2.3", ["198.51.100.1"], "198.51.100.1"),
        # the client's own entry before it is not believed
        ("10.1.2.3", ["203.0.113.66", "198.51.100.1"], "198.51.100.1"),
        # two trusted proxies in a row
        ("10.1.2.3", ["198.51.100.1", "10.9.9.9"], "198.51.100.1"),
        ("2001:db8:1::5", ["[2001:db8:2::7]:443"], "2001:db8:2::7"),
        # a trusted proxy without a header: the proxy itself
        ("10.1.2.3", [], "10.1.2.3"),
        # a hop nobody can name ends the walk at the last trusted one
        ("10.1.2.3", ["198.51.100.1", "unknown"], "10.1.2.3"),
        ("10.1.2.3", ["198.51.100.1", "garbage", "10.9.9.9"], "10.9.9.9"),
        # every hop trusted: the leftmost
        ("10.1.2.3", ["10.7.7.7", "10.8.8.8"], "10.7.7.7"),
        # no peer (a Unix socket): nothing to go on
        (None, ["198.51.100.1"], None),
    ],
)
def test_the_chain_is_walked_from_the_right(
    peer: str | None, chain: list[str], client: str | None
) -> None:
    assert PROXIES.client(peer, chain) == client


def test_a_chain_longer_than_max_hops_stops_there() -> None:
    chain = ["198.51.100.1"] + [f"10.0.0.{i}" for i in range(MAX_HOPS + 4)]
    assert PROXIES.client("10.1.2.3", chain) == "10.0.0.4"  # the 16th hop from the right


def test_trusted_proxies_are_validated() -> None:
    settings = load_settings(None, server={"trusted_proxies": ["10.0.0.1", "10.2.0.0/16"]})
    assert settings.server.trusted_proxies == ["10.0.0.1/32", "10.2.0.0/16"]
    with pytest.raises(ConfigError, match="not an IP address or CIDR network"):
        load_settings(None, server={"trusted_proxies": ["edge-proxy"]})
    with pytest.raises(ConfigError, match="client_address_header"):
        load_settings(None, server={"client_address_header": "x-real-ip"})
