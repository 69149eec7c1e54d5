"""Digest authentication with the edge as the server: RFC vectors, nonces, outcomes."""

from __future__ import annotations

from telephony_edge.sip.auth import DigestServer, Outcome, digest_response, parse_auth_params

URI = "sip:+15555550201@127.0.0.1:5060"


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


def authorization(server: DigestServer, now: float, password: str, algorithm: str) -> str:
    [challenge] = [v for _, v in server.challenge("edge", now) if f"algorithm={algorithm}" in v]
    nonce = parse_auth_params(challenge)[1]["nonce"]
    response = digest_response(
        algorithm, "trunk", "edge", password, "INVITE", URI, nonce, "auth", "00000001", "c0ffee"
    )
    return (
        f'Digest username="trunk", realm="edge", nonce="{nonce}", uri="{URI}", '
        f'response="{response}", algorithm={algorithm}, cnonce="c0ffee", qop=auth, nc=00000001'
    )


def verify(server: DigestServer, header: str | None, now: float) -> Outcome:
    return server.verify(header, "INVITE", URI, "edge", "trunk", "s3cret", now)


def test_challenge_offers_sha256_then_md5_with_qop() -> None:
    headers = DigestServer().challenge("edge", 10.0, stale=True)
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
    assert server.verify(good, "INVITE", URI + ";x", "edge", "trunk", "s3cret", 1.0) is Outcome.BAD
    assert server.verify(good, "BYE", URI, "edge", "trunk", "s3cret", 1.0) is Outcome.BAD
    # an algorithm the trunk is not offered is no answer
    only_md5 = server.verify(good, "INVITE", URI, "edge", "trunk", "s3cret", 1.0, ("MD5",))
    assert only_md5 is Outcome.MISSING
