"""The edge's digest answers, checked by the edge's own digest server (sip/auth.py)."""

from __future__ import annotations

import pytest

from telephony_edge.sip.auth import DigestServer, Outcome, binding, digest_response
from telephony_edge.sip.digest_client import DigestClient, read_challenge
from telephony_edge.sip.message import Request, Response, build_response
from telephony_edge.sip.parse import parse_message
from tests.sip import wire

URI = "sip:+15550100@carrier.example"
BOUND = binding("198.51.100.7", "call-1", "INVITE")


def invite() -> Request:
    msg = parse_message(wire.twilio_invite())
    assert isinstance(msg, Request)
    return msg


def challenge(
    headers: list[tuple[str, str]], status: int = 401, name: str = "WWW-Authenticate"
) -> Response:
    renamed = [(name, value) for _, value in headers]
    return build_response(invite(), status, None, renamed, to_tag="t1")


def verdict(server: DigestServer, header: str, password: str = "s3cret", **kw: object) -> Outcome:
    return server.verify(
        header, "INVITE", URI, "carrier", "edge", password, 10.0, bound=BOUND, **kw
    )  # type: ignore[arg-type]


@pytest.mark.parametrize("algorithms", [("SHA-256", "MD5"), ("MD5",)])
def test_answer_passes_the_servers_check(algorithms: tuple[str, ...]) -> None:
    server = DigestServer()
    client = DigestClient("edge", "s3cret")
    assert (
        client.accept(challenge(server.challenge("carrier", 10.0, False, algorithms, bound=BOUND)))
        is None
    )
    [(name, value)] = client.headers("INVITE", URI)
    assert name == "Authorization"
    assert f"algorithm={algorithms[0]}" in value and "qop=auth" in value and "nc=00000001" in value
    assert verdict(server, value) is Outcome.OK
    # the same nonce answers the next request with nc 2 (a registration refresh)
    [(_, again)] = client.headers("INVITE", URI)
    assert "nc=00000002" in again and verdict(server, again) is Outcome.OK


def test_wrong_password_is_bad_and_a_repeated_nonce_gives_up() -> None:
    server = DigestServer()
    client = DigestClient("edge", "wrong")
    first = challenge(server.challenge("carrier", 10.0, bound=BOUND))
    assert client.accept(first) is None
    [(_, value)] = client.headers("INVITE", URI)
    assert verdict(server, value) is Outcome.BAD
    # the server challenges again with the nonce just answered: the credentials are wrong
    assert client.accept(first) == "the credentials were refused"


def test_stale_or_new_nonce_is_answered_again() -> None:
    server = DigestServer()
    client = DigestClient("edge", "s3cret")
    headers = server.challenge("carrier", 10.0, bound=BOUND)
    assert client.accept(challenge(headers)) is None
    client.headers("INVITE", URI)
    stale = [(n, v.replace('qop="auth"', 'qop="auth", stale=true')) for n, v in headers]
    assert client.accept(challenge(stale)) is None  # the same nonce, stale: again
    assert client.accept(challenge(server.challenge("carrier", 11.0, bound=BOUND))) is None
    [(_, value)] = client.headers("INVITE", URI)
    assert "nc=00000001" in value  # a new nonce counts from 1


def test_proxy_challenge_is_answered_in_proxy_authorization() -> None:
    server = DigestServer()
    client = DigestClient("edge", "s3cret")
    headers = server.challenge("carrier", 10.0, bound=BOUND)
    response = challenge(headers, 407, "Proxy-Authenticate")
    assert client.accept(response) is None
    [(name, value)] = client.headers("INVITE", URI)
    assert name == "Proxy-Authorization" and verdict(server, value) is Outcome.OK


def test_no_qop_and_opaque_are_rfc2069_style() -> None:
    nonce = "abc123"
    header = f'Digest realm="carrier", nonce="{nonce}", opaque="xyz", algorithm=MD5'
    client = DigestClient("edge", "s3cret")
    assert client.accept(challenge([("", header)])) is None
    [(_, value)] = client.headers("INVITE", URI)
    assert "qop" not in value and "cnonce" not in value and 'opaque="xyz"' in value
    expected = digest_response("MD5", "edge", "carrier", "s3cret", "INVITE", URI, nonce)
    assert f'response="{expected}"' in value


def test_what_the_edge_cannot_answer() -> None:
    client = DigestClient("edge", "s3cret", realm="carrier")
    only_int = 'Digest realm="carrier", nonce="n", algorithm=MD5, qop="auth-int"'
    assert read_challenge(challenge([("", only_int)])) is None
    assert client.accept(challenge([("", only_int)])) is not None
    sha512 = 'Digest realm="carrier", nonce="n", algorithm=SHA-512-256, qop="auth"'
    assert read_challenge(challenge([("", sha512)])) is None
    other = 'Digest realm="elsewhere", nonce="n", algorithm=MD5, qop="auth"'
    assert "realm" in (client.accept(challenge([("", other)])) or "")
    assert client.headers("INVITE", URI) == []  # nothing accepted: no credentials sent
    # the first of several the edge knows, in the server's order
    both = [("", sha512), ("", 'Digest realm="carrier", nonce="m", algorithm=MD5')]
    found = read_challenge(challenge(both))
    assert found is not None and found.algorithm == "MD5" and found.nonce == "m"
