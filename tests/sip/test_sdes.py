"""SDES (RFC 4568): the a=crypto lines real offers carry, the policy table, and our answers."""

from __future__ import annotations

import base64

import pytest

from telephony_edge.sip import sdes
from telephony_edge.sip.sdes import CryptoError, Refused, SrtpRules, Unusable, parse_crypto
from telephony_edge.sip.sdp import (
    LocalSession,
    MediaConfig,
    SrtpRefused,
    accept_answer,
    negotiate,
    parse_sdp,
)

KEY = bytes(range(30))
INLINE = "inline:" + base64.b64encode(KEY).decode()
# baresip 1.0's srtp-mand offer, as it sent it on the wire
BARESIP_SAVP = (
    "v=0\r\no=- 4217372119 386303725 IN IP4 192.0.2.2\r\ns=-\r\nc=IN IP4 192.0.2.2\r\n"
    "t=0 0\r\na=tool:baresip 1.0.0\r\nm=audio 7592 {proto} 0 8 101\r\n"
    "a=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\n"
    "a=fmtp:101 0-15\r\na=sendrecv\r\n{crypto}a=ptime:20\r\n"
)
TLS = SrtpRules("optional", keys_safe=True)
UDP = SrtpRules("optional", keys_safe=False)
CONFIG = MediaConfig(address="198.51.100.10", preferences=("PCMU", "PCMA"))


def offer(proto: str = "RTP/SAVP", *crypto: str) -> bytes:
    lines = "".join(f"a=crypto:{c}\r\n" for c in crypto)
    return BARESIP_SAVP.format(proto=proto, crypto=lines).encode()


def test_a_line_with_lifetime_mki_and_window() -> None:
    line = parse_crypto(
        f"7 AES_CM_128_HMAC_SHA1_32 {INLINE}|2^20|1:4 WSH=256 -EXT=1 FEC_ORDER=FEC_SRTP"
    )
    assert (line.tag, line.suite, line.window) == (7, "AES_CM_128_HMAC_SHA1_32", 256)
    assert line.key == sdes.MasterKey(KEY, 2**20, b"\x00\x00\x00\x01")
    assert parse_crypto(f"1 AES_CM_128_HMAC_SHA1_80 {INLINE}|1048576").key.lifetime == 2**20


@pytest.mark.parametrize(
    "value",
    [
        "x AES_CM_128_HMAC_SHA1_80 " + INLINE,  # tag
        "1 AES_CM_128_HMAC_SHA1_80",  # no key
        "1 NOT_A_SUITE " + INLINE,
        "1 AES_CM_128_HMAC_SHA1_80 inline:!!!notbase64!!!",
        "1 AES_CM_128_HMAC_SHA1_80 inline:" + base64.b64encode(KEY[:16]).decode(),  # no salt
        "1 AES_CM_128_HMAC_SHA1_80 uri:https://example.com/key",
        "1 AES_CM_128_HMAC_SHA1_80 " + INLINE + "|2^49",  # beyond SRTP's 2^48
        "1 AES_CM_128_HMAC_SHA1_80 " + INLINE + "|256:1",  # MKI does not fit
        "1 AES_CM_128_HMAC_SHA1_80 " + INLINE + "|1:1|2:1",
        "1 AES_CM_128_HMAC_SHA1_80 " + INLINE + " WSH=lots",
    ],
)
def test_malformed_lines_are_the_senders_fault(value: str) -> None:
    with pytest.raises(CryptoError):
        parse_crypto(value)


@pytest.mark.parametrize(
    "value",
    [
        "1 AES_256_CM_HMAC_SHA1_80 " + INLINE,
        "1 AEAD_AES_128_GCM " + INLINE,
        f"1 AES_CM_128_HMAC_SHA1_80 {INLINE}|2^20|1:4;{INLINE}|2^20|2:4",  # two master keys
        "1 AES_CM_128_HMAC_SHA1_80 " + INLINE + " KDR=1",
        "1 AES_CM_128_HMAC_SHA1_80 " + INLINE + " UNENCRYPTED_SRTCP",
        "1 AES_CM_128_HMAC_SHA1_80 " + INLINE + " UNAUTHENTICATED_SRTP",
        "1 AES_CM_128_HMAC_SHA1_80 " + INLINE + " FEC_KEY=" + INLINE,
        "1 AES_CM_128_HMAC_SHA1_80 " + INLINE + " NEW_PARAM=1",  # §6.3.7: not ignorable
    ],
)
def test_well_formed_but_unusable(value: str) -> None:
    with pytest.raises(Unusable):
        parse_crypto(value)


@pytest.mark.parametrize(
    ("proto", "crypto", "rules", "outcome"),
    [
        ("RTP/SAVP", True, TLS, "srtp"),
        ("RTP/SAVPF", True, TLS, "srtp"),
        ("RTP/AVP", True, TLS, "srtp"),  # best effort, taken
        ("RTP/AVP", False, TLS, "plain"),
        ("RTP/SAVP", True, UDP, "refused"),  # keys in the clear
        ("RTP/AVP", True, UDP, "plain"),  # best effort, not taken
        ("RTP/SAVP", True, SrtpRules("optional", keys_safe=True), "srtp"),
        ("RTP/SAVP", True, SrtpRules("none", keys_safe=True), "refused"),
        ("RTP/AVP", True, SrtpRules("none", keys_safe=True), "plain"),
        ("RTP/AVP", False, SrtpRules("required", keys_safe=True), "refused"),
        ("RTP/AVP", True, SrtpRules("required", keys_safe=False), "refused"),
        ("RTP/SAVP", False, TLS, "refused"),  # SAVP without a key
    ],
)
def test_the_policy_table(proto: str, crypto: bool, rules: SrtpRules, outcome: str) -> None:
    lines = [f"1 AES_CM_128_HMAC_SHA1_80 {INLINE}"] if crypto else []
    try:
        terms = sdes.choose(proto, lines, rules)
    except Refused as exc:
        assert outcome == "refused", exc
        assert not exc.bad
        return
    assert outcome == ("srtp" if terms is not None else "plain")


def test_first_usable_line_in_the_offers_order() -> None:
    lines = [
        f"1 AES_256_CM_HMAC_SHA1_80 {INLINE}",
        f"2 AES_CM_128_HMAC_SHA1_32 {INLINE}",
        f"3 AES_CM_128_HMAC_SHA1_80 {INLINE}",
    ]
    terms = sdes.choose("RTP/SAVP", lines, TLS)
    assert terms is not None and (terms.tag, terms.suite) == (2, "AES_CM_128_HMAC_SHA1_32")
    assert terms.remote.key == KEY and len(terms.local.key) == 30 and terms.local.key != KEY


def test_a_malformed_line_alone_is_bad_input_and_an_unusable_one_is_not() -> None:
    with pytest.raises(Refused) as bad:
        sdes.choose("RTP/SAVP", ["1 AES_CM_128_HMAC_SHA1_80 inline:short"], TLS)
    assert bad.value.bad
    with pytest.raises(Refused) as unusable:
        sdes.choose("RTP/SAVP", [f"1 AEAD_AES_256_GCM {INLINE}"], TLS)
    assert not unusable.value.bad and "not usable" in str(unusable.value)


def test_a_reoffer_keeps_our_key_and_srtp() -> None:
    first = sdes.choose("RTP/SAVP", [f"1 AES_CM_128_HMAC_SHA1_80 {INLINE}"], TLS)
    assert first is not None
    again = sdes.choose("RTP/SAVP", [f"1 AES_CM_128_HMAC_SHA1_80 {INLINE}"], TLS, keep=first)
    assert again == first  # nothing changed: the same terms, the contexts kept
    other = sdes.choose("RTP/SAVP", [f"1 AES_CM_128_HMAC_SHA1_32 {INLINE}"], TLS, keep=first)
    assert other is not None and other.local != first.local  # a new suite, a new key
    with pytest.raises(Refused, match="without SRTP"):
        sdes.choose("RTP/AVP", [], TLS, keep=first)


def test_savp_offer_answered_savp_with_our_key() -> None:
    sdp = parse_sdp(offer("RTP/SAVP", f"5 AES_CM_128_HMAC_SHA1_80 {INLINE}|2^31"))
    chosen = negotiate(sdp, CONFIG, TLS)
    assert chosen.srtp is not None and chosen.srtp.remote.lifetime == 2**31
    text = LocalSession(CONFIG, 40000, "9").answer(sdp, chosen).decode()
    assert "m=audio 40000 RTP/SAVP 0 101\r\n" in text
    [line] = [ln for ln in text.split("\r\n") if ln.startswith("a=crypto:")]
    answered = parse_crypto(line.removeprefix("a=crypto:"))
    assert (answered.tag, answered.suite) == (5, "AES_CM_128_HMAC_SHA1_80")
    assert answered.key.key == chosen.srtp.local.key


@pytest.mark.parametrize("proto", ["RTP/SAVPF", "RTP/AVP"])
def test_the_answer_keeps_the_offers_profile(proto: str) -> None:
    sdp = parse_sdp(offer(proto, f"1 AES_CM_128_HMAC_SHA1_32 {INLINE}"))
    chosen = negotiate(sdp, CONFIG, TLS)
    text = LocalSession(CONFIG, 40000, "9").answer(sdp, chosen).decode()
    assert (
        f"m=audio 40000 {proto} 0 101\r\n" in text and "a=crypto:1 AES_CM_128_HMAC_SHA1_32 " in text
    )


def test_savp_over_udp_is_488_by_default() -> None:
    sdp = parse_sdp(offer("RTP/SAVP", f"1 AES_CM_128_HMAC_SHA1_80 {INLINE}"))
    with pytest.raises(SrtpRefused, match="not TLS"):
        negotiate(sdp, CONFIG)
    assert negotiate(sdp, CONFIG, SrtpRules("optional", keys_safe=True)).srtp is not None


def test_our_offer_and_the_answer_to_it() -> None:
    local = LocalSession(CONFIG, 40000, "9")
    text = local.offer(crypto=sdes.offer(None), secure=True).decode()
    assert "m=audio 40000 RTP/SAVP " in text and local.profile == "RTP/SAVP"
    ours = parse_crypto(local.offered_crypto or "")
    assert (ours.tag, ours.suite) == (1, "AES_CM_128_HMAC_SHA1_80")
    answer = parse_sdp(offer("RTP/SAVP", f"1 AES_CM_128_HMAC_SHA1_80 {INLINE}"))
    chosen = accept_answer(answer, CONFIG, local.offered_crypto)
    assert chosen.srtp is not None
    assert chosen.srtp.local == ours.key and chosen.srtp.remote.key == KEY
    wrong_tag = parse_sdp(offer("RTP/SAVP", f"2 AES_CM_128_HMAC_SHA1_80 {INLINE}"))
    with pytest.raises(SrtpRefused):
        accept_answer(wrong_tag, CONFIG, local.offered_crypto)
