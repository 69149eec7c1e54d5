"""SDP offer/answer (RFC 3264) on the offers real peers send."""

from __future__ import annotations

import pytest

from telephony_edge.sip.sdp import (
    LocalSession,
    MediaConfig,
    Negotiated,
    NoCommonCodec,
    SdpError,
    accept_answer,
    negotiate,
    parse_sdp,
)
from tests.sip import wire

CONFIG = MediaConfig(address="198.51.100.10", preferences=("G722", "PCMU", "PCMA"))


def answer_for(offer_text: str, config: MediaConfig = CONFIG) -> tuple[str, Negotiated]:
    offer = parse_sdp(offer_text.encode())
    chosen = negotiate(offer, config)
    local = LocalSession(config, 40000, "777")
    return local.answer(offer, chosen).decode(), chosen


def test_twilio_pcmu_first() -> None:
    text, chosen = answer_for(wire.TWILIO_SDP)
    assert chosen.codec.name == "PCMU" and chosen.payload_type == 0
    assert chosen.event_payload_type == 101
    assert chosen.remote_address == "54.172.60.2" and chosen.remote_port == 18422
    assert chosen.ptime == 20
    assert text == (
        "v=0\r\n"
        "o=- 777 0 IN IP4 198.51.100.10\r\n"
        "s=telephony-edge\r\n"
        "c=IN IP4 198.51.100.10\r\n"
        "t=0 0\r\n"
        "m=audio 40000 RTP/AVP 0 101\r\n"
        "a=rtpmap:0 PCMU/8000\r\n"
        "a=rtpmap:101 telephone-event/8000\r\n"
        "a=fmtp:101 0-16\r\n"
        "a=ptime:20\r\n"
        "a=rtcp:40001\r\n"
        "a=sendrecv\r\n"
    )


def test_sipp_pcma_with_event_101() -> None:
    text, chosen = answer_for(wire.SIPP_SDP)
    assert chosen.codec.name == "PCMA" and chosen.event_payload_type == 101
    assert "m=audio 40000 RTP/AVP 8 101\r\n" in text


def test_g722_preferred_and_16k_audio() -> None:
    _, chosen = answer_for(wire.ASTERISK_SDP)
    assert chosen.codec.name == "G722" and chosen.payload_type == 9
    assert chosen.codec.clock_rate == 8000 and chosen.codec.sample_rate == 16000
    # offer order wins by default; "local" order makes our preference win
    pcmu_first = wire.ASTERISK_SDP.replace("RTP/AVP 9 0 8 101", "RTP/AVP 0 9 8 101")
    assert answer_for(pcmu_first)[1].codec.name == "PCMU"
    local = MediaConfig(preferences=("G722", "PCMU"), order="local")
    assert answer_for(pcmu_first, local)[1].codec.name == "G722"
    # the edge's default: G.722 whenever offered, the rest in the offer's order
    wide = MediaConfig(preferences=("G722", "PCMU", "PCMA"), wideband_first=True)
    assert answer_for(pcmu_first, wide)[1].codec.name == "G722"
    # the preference list also filters
    only_pcma = MediaConfig(preferences=("PCMA",))
    assert answer_for(wire.ASTERISK_SDP, only_pcma)[1].codec.name == "PCMA"


def test_telephone_event_at_8000_and_48000() -> None:
    offer = (
        "v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\n"
        "m=audio 5004 RTP/AVP 111 0 110 96\r\n"
        "a=rtpmap:111 opus/48000/2\r\n"
        "a=rtpmap:110 telephone-event/48000\r\n"
        "a=rtpmap:96 telephone-event/8000\r\n"
    )
    text, chosen = answer_for(offer)
    assert chosen.codec.name == "PCMU" and chosen.event_payload_type == 96
    assert "m=audio 40000 RTP/AVP 0 96\r\n" in text
    only_48k = offer.replace("a=rtpmap:96 telephone-event/8000\r\n", "").replace(" 96", "")
    assert answer_for(only_48k)[1].event_payload_type is None


def test_no_common_codec() -> None:
    offer = wire.SIPP_SDP.replace("RTP/AVP 8 101", "RTP/AVP 18 101").replace(
        "a=rtpmap:8 PCMA/8000", "a=rtpmap:18 G729/8000"
    )
    with pytest.raises(NoCommonCodec):
        negotiate(parse_sdp(offer.encode()), CONFIG)


def test_extra_streams_refused_with_port_0() -> None:
    offer = wire.SIPP_SDP + "m=video 6002 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n"
    text, _ = answer_for(offer)
    assert text.endswith("m=video 0 RTP/AVP 96\r\n")


@pytest.mark.parametrize(
    ("change", "ours"),
    [
        ("a=sendonly", "recvonly"),
        ("a=inactive", "inactive"),
        ("a=recvonly", "sendonly"),
        ("a=sendrecv", "sendrecv"),
    ],
)
def test_hold_directions(change: str, ours: str) -> None:
    _, chosen = answer_for(wire.TWILIO_SDP.replace("a=sendrecv", change))
    assert chosen.direction == ours


def test_session_level_direction_and_old_style_hold() -> None:
    session_level = wire.SIPP_SDP.replace("t=0 0\r\n", "t=0 0\r\na=sendonly\r\n")
    assert answer_for(session_level)[1].direction == "recvonly"
    old = wire.SIPP_SDP.replace("c=IN IP4 127.0.0.1", "c=IN IP4 0.0.0.0")
    _, chosen = answer_for(old)
    assert chosen.direction == "recvonly" and chosen.on_hold


def test_origin_version_increments_only_on_change() -> None:
    local = LocalSession(CONFIG, 40000, "777")
    offer = parse_sdp(wire.TWILIO_SDP.encode())
    first = local.answer(offer, negotiate(offer, CONFIG))
    assert b"o=- 777 0 " in first
    assert b"o=- 777 0 " in local.answer(offer, negotiate(offer, CONFIG))  # same SDP again
    hold = parse_sdp(wire.TWILIO_SDP.replace("a=sendrecv", "a=sendonly").encode())
    held = local.answer(hold, negotiate(hold, CONFIG))
    assert b"o=- 777 1 " in held and b"a=recvonly" in held
    resumed = local.answer(offer, negotiate(offer, CONFIG))
    assert b"o=- 777 2 " in resumed and b"a=sendrecv" in resumed


def test_delayed_offer_and_its_answer() -> None:
    local = LocalSession(CONFIG, 40000, "9")
    offer = local.offer().decode()
    assert "m=audio 40000 RTP/AVP 9 0 8 101 13\r\n" in offer
    assert "a=rtpmap:13 CN/8000\r\n" in offer
    assert "a=rtpmap:9 G722/8000\r\n" in offer and "a=fmtp:101 0-16\r\n" in offer
    answer = wire.SIPP_SDP.replace("RTP/AVP 8 101", "RTP/AVP 0 101").replace(
        "a=rtpmap:8 PCMA/8000", "a=rtpmap:0 PCMU/8000"
    )
    chosen = accept_answer(parse_sdp(answer.encode()), CONFIG)
    assert chosen.codec.name == "PCMU" and chosen.remote_port == 6000


@pytest.mark.parametrize(
    ("formats", "rtpmap", "cn"),
    [
        ("8 101 13", "", 13),  # the static type, with no rtpmap (RFC 3551)
        ("8 101 97", "a=rtpmap:97 CN/8000\r\n", 97),  # a dynamic one
        ("8 101 97", "a=rtpmap:97 CN/16000\r\n", None),  # not at the codec's clock
        ("8 101", "", None),
    ],
)
def test_comfort_noise_is_answered_when_offered(formats: str, rtpmap: str, cn: int | None) -> None:
    offer = wire.SIPP_SDP.replace("RTP/AVP 8 101", f"RTP/AVP {formats}") + rtpmap
    text, chosen = answer_for(offer)
    assert chosen.cn_payload_type == cn
    assert (f"a=rtpmap:{cn} CN/8000\r\n" in text) is (cn is not None)
    assert f"RTP/AVP 8 101{f' {cn}' if cn else ''}\r\n" in text


def test_round_trip_and_errors() -> None:
    sdp = parse_sdp(wire.ASTERISK_SDP.encode())
    assert parse_sdp(sdp.to_bytes()).to_bytes() == sdp.to_bytes()
    for bad in (b"", b"v=1\r\n", b"v=0\r\ns=x\r\n", b"v=0\r\no=bad\r\n", b"\xff\xfe"):
        with pytest.raises(SdpError):
            parse_sdp(bad)
    no_c = "v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nt=0 0\r\nm=audio 5 RTP/AVP 0\r\n"
    with pytest.raises(SdpError):
        parse_sdp(no_c.encode())
