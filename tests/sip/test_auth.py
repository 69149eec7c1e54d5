"""Digest authentication with the edge as the server: RFC vectors, nonces, outcomes."""

from __future__ import annotations

import pytest

from telephony_edge.sip.auth import (
    DigestServer,
    NonceUses,
    Outcome,
    binding,
    digest_response,
    parse_auth_params,
)

URI = "sip:+15555550201@127.0.0.1:5060"
BOUND = binding("192.0.2.10", "call-1@pbx", "INVITE")


def test_rfc_7616_vectors_sha256_and_md5_and_rfc_2617() -> None:
    args = ("Mufasa", "http-auth@example.org", "Circle of Life", "GET", "/dir/index.html")
    nonce = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v"
    cnonce = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"
    sha = digest_response("SHA-256", *args, nonce, "auth", "00000001", cnonce)
    assert sha == "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"
    md5 = digest_response("MD5", *args, nonce, "auth", "00000001", cnonce)
    assert md5 == "8ca523f5e9506fed4657c9700eebdbec"
    old = digest_response(
        "MD5", "Mufasa", "testrealm@host.com", "Circle Of Life", "GET", "/dir/index.html",
        "dcd98b7102dd2f0e8b11d0f600bfb0c093", "auth", "00000001", "0a4f113b",
    )  # fmt: skip
    assert old == "6629fae49393a05397450978507c4ef1"


def nonce_of(server: DigestServer, now: float, algorithm: str = "SHA-256") -> str:
    challenges = server.challenge("edge", now, bound=BOUND)
    [challenge] = [v for _, v in challenges if f"algorithm={algorithm}" in v]
    return parse_auth_params(challenge)[1]["nonce"]


def authorization(
    server: DigestServer,
    now: float,
    password: str,
    algorithm: str,
    nc: str = "00000001",
    nonce: str | None = None,
    qop: bool = True,
) -> str:
    nonce = nonce or nonce_of(server, now, algorithm)
    args = ("auth", nc, "c0ffee") if qop else ()
    response = digest_response(algorithm, "trunk", "edge", password, "INVITE", URI, nonce, *args)
    header = (
        f'Digest username="trunk", realm="edge", nonce="{nonce}", uri="{URI}", '
        f'response="{response}", algorithm={algorithm}'
    )
    return header + (f', cnonce="c0ffee", qop=auth, nc={nc}' if qop else "")


def verify(server: DigestServer, header: str | None, now: float, bound: str = BOUND) -> Outcome:
    return server.verify(header, "INVITE", URI, "edge", "trunk", "s3cret", now, bound=bound)


def test_challenge_offers_sha256_then_md5_with_qop() -> None:
    headers = DigestServer().challenge("edge", 10.0, stale=True, bound=BOUND)
    assert [name for name, _ in headers] == ["WWW-Authenticate"] * 2
    assert "algorithm=SHA-256" in headers[0][1] and "algorithm=MD5" in headers[1][1]
    assert all('qop="auth"' in v and "stale=true" in v for _, v in headers)


def test_good_bad_missing_stale_and_forged() -> None:
    server = DigestServer(nonce_ttl=300.0)
    for algorithm in ("SHA-256", "MD5"):
        assert verify(server, authorization(server, 0.0, "s3cret", algorithm), 1.0) is Outcome.OK
        assert verify(server, authorization(server, 0.0, "wrong", algorithm), 1.0) is Outcome.BAD
    good = authorization(server, 0.0, "s3cret", "SHA-256")
    assert verify(server, good, 301.0) is Outcome.STALE
    assert verify(server, None, 1.0) is Outcome.MISSING
    odd = good.replace('username="trunk"', 'username="tr\udcffunk"')  # an undecodable byte
    assert verify(server, odd, 1.0) is Outcome.BAD
    # a nonce from another server (another worker, or made up) is challenged afresh
    assert verify(DigestServer(), good, 1.0) is Outcome.MISSING
    # the digest covers the Request-URI and the method
    args = ("edge", "trunk", "s3cret", 1.0)
    assert server.verify(good, "INVITE", URI + ";x", *args, bound=BOUND) is Outcome.BAD
    assert server.verify(good, "BYE", URI, *args, bound=BOUND) is Outcome.BAD
    # an algorithm the trunk is not offered is no answer
    only_md5 = server.verify(good, "INVITE", URI, *args, ("MD5",), bound=BOUND)
    assert only_md5 is Outcome.MISSING


def test_a_nonce_authorizes_only_the_source_and_call_it_was_issued_for() -> None:
    """Issue 19: a copied Authorization header opened new calls for 300 s."""
    server = DigestServer()
    good = authorization(server, 0.0, "s3cret", "SHA-256")
    elsewhere = binding("192.0.2.99", "call-1@pbx", "INVITE")
    another_call = binding("192.0.2.10", "call-2@pbx", "INVITE")
    assert verify(server, good, 1.0, elsewhere) is Outcome.MISSING  # a fresh challenge
    assert verify(server, good, 1.0, another_call) is Outcome.MISSING
    assert verify(server, good, 1.0) is Outcome.OK


def test_nc_must_grow_so_a_copied_header_is_a_replay() -> None:
    server = DigestServer()
    nonce = nonce_of(server, 0.0)
    first = authorization(server, 0.0, "s3cret", "SHA-256", "00000001", nonce)
    assert verify(server, first, 1.0) is Outcome.OK
    assert verify(server, first, 2.0) is Outcome.REPLAY  # the same header again
    second = authorization(server, 0.0, "s3cret", "SHA-256", "00000002", nonce)
    assert verify(server, second, 3.0) is Outcome.OK  # the client's next use: nc grew
    assert verify(server, first, 4.0) is Outcome.REPLAY  # never back
    # without qop there is no nc: a nonce authorizes once
    plain = authorization(server, 0.0, "s3cret", "MD5", qop=False)
    assert verify(server, plain, 1.0) is Outcome.OK
    assert verify(server, plain, 2.0) is Outcome.REPLAY


@pytest.mark.parametrize("nc", ["1", "0000000g", "000000001", ""])
def test_qop_auth_wants_an_eight_hex_digit_nc_and_a_cnonce(nc: str) -> None:
    server = DigestServer()
    assert verify(server, authorization(server, 0.0, "s3cret", "SHA-256", nc), 1.0) is Outcome.BAD
    no_cnonce = authorization(server, 0.0, "s3cret", "SHA-256").replace('cnonce="c0ffee", ', "")
    assert verify(server, no_cnonce, 1.0) is Outcome.BAD


def test_nonce_uses_are_bounded_and_what_was_forgotten_is_stale() -> None:
    uses = NonceUses(max_nonces=2)
    assert uses.use("a.x", 0xA, 1) is Outcome.OK
    assert uses.use("b.x", 0xB, 1) is Outcome.OK
    assert uses.use("c.x", 0xC, 1) is Outcome.OK  # "a" forgotten: the floor is its time
    assert len(uses) == 2 and uses.floor == 0xA
    assert uses.use("a.x", 0xA, 1) is Outcome.STALE  # maybe used: never taken again
    assert uses.use("b.x", 0xB, 1) is Outcome.REPLAY
    uses.expire(0xC)  # older than the nonce TTL
    assert len(uses) == 1
