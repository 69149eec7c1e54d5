"""Stream tokens: bound to a subject, signed, short-lived."""

from __future__ import annotations

import pytest

from telephony_edge.tokens import StreamTokens, TokenError

TOKENS = StreamTokens.from_auth_token("auth-token", ttl_s=60)


def test_a_token_verifies_for_its_subject_until_it_expires() -> None:
    token = TOKENS.issue("call_1", now=1000.0)
    TOKENS.verify(token, "call_1", now=1000.0)
    TOKENS.verify(token, "call_1", now=1060.0)
    with pytest.raises(TokenError, match="expired"):
        TOKENS.verify(token, "call_1", now=1062.0)


def test_other_subjects_keys_and_tampering_are_refused() -> None:
    token = TOKENS.issue("call_1", now=1000.0)
    with pytest.raises(TokenError, match="signature"):
        TOKENS.verify(token, "call_2", now=1000.0)
    other = StreamTokens.from_auth_token("another-account-token", ttl_s=60)
    with pytest.raises(TokenError, match="signature"):
        other.verify(token, "call_1", now=1000.0)
    expiry, mac = token.split(".")
    with pytest.raises(TokenError, match="signature"):  # a later expiry is not signed
        TOKENS.verify(f"{int(expiry) + 3600}.{mac}", "call_1", now=1000.0)
    for bad in ("", "abc", "123", ".x", "12a.x", "1" * 40 + ".x", "100.é"):
        with pytest.raises(TokenError):
            TOKENS.verify(bad, "call_1", now=1000.0)


def test_the_token_is_url_safe_and_the_key_is_not_the_auth_token() -> None:
    token = TOKENS.issue("call_1")
    assert all(c.isalnum() or c in "-_." for c in token)
    assert TOKENS.key != b"auth-token"
