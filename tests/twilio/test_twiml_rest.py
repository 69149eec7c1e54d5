"""TwiML documents, the templates in twiml/, and the REST client against the stand-in."""

from __future__ import annotations

from pathlib import Path
from xml.etree import ElementTree

import pytest

from telephony_edge.twilio import twiml
from telephony_edge.twilio.rest import TwilioApiError, TwilioRest
from telephony_edge.twilio.simulator import parse_twiml
from tests.twilio.fake_twilio import FakeTwilio
from tests.twilio.harness import ACCOUNT_SID, AUTH_TOKEN, CALLER, LOCAL_NUMBER

TEMPLATES = Path(__file__).resolve().parents[2] / "twiml"


def test_stream_twiml_carries_the_parameters() -> None:
    doc = twiml.connect_stream("wss://edge/twilio/stream", {"token": "a&b<c", "call_id": "x"})
    answer = parse_twiml(doc)
    assert answer.stream is not None
    assert answer.stream.url == "wss://edge/twilio/stream"
    assert answer.stream.parameters == {"token": "a&b<c", "call_id": "x"}
    assert twiml.stream_url("https://e.example.com/") == "wss://e.example.com/twilio/stream"
    assert twiml.stream_url("http://127.0.0.1:8080") == "ws://127.0.0.1:8080/twilio/stream"


def test_stream_twiml_can_ask_for_stream_events() -> None:
    callback = "https://edge/twilio/stream-status?call_id=x&y=1"
    doc = twiml.connect_stream(
        "wss://edge/twilio/stream", {"call_id": "x"}, status_callback=callback
    )
    [stream] = ElementTree.fromstring(doc).iter("Stream")
    assert stream.get("statusCallback") == callback
    assert stream.get("statusCallbackMethod") == "POST"
    [plain] = ElementTree.fromstring(twiml.connect_stream("wss://e/s", {})).iter("Stream")
    assert plain.get("statusCallback") is None


def test_dial_accepts_numbers_and_sip_uris_only() -> None:
    assert "<Dial><Number>+15555550123</Number></Dial>" in twiml.dial("+1 555 555 0123")
    assert "<Dial><Sip>sip:desk@pbx.example.com</Sip></Dial>" in twiml.dial(
        "sip:desk@pbx.example.com"
    )
    for bad in ("", "reception", "sip:nohost", "sip:a@b <script>", "+0"):
        with pytest.raises(ValueError):
            twiml.dial(bad)


def test_templates_are_twiml_that_reaches_the_voice_webhook() -> None:
    for path in sorted(TEMPLATES.glob("*.xml")):
        root = ElementTree.parse(path).getroot()
        assert root.tag == "Response", path
        redirect = root.find("Redirect")
        if redirect is not None:
            assert redirect.get("method") == "POST"
            assert (redirect.text or "").endswith("/twilio/voice"), path
        else:
            assert root.find("Hangup") is not None, path


async def test_rest_client_creates_hangs_up_and_transfers_calls() -> None:
    fake = await FakeTwilio(ACCOUNT_SID, AUTH_TOKEN, {LOCAL_NUMBER}).start()
    rest = TwilioRest(ACCOUNT_SID, AUTH_TOKEN, api_base_url=fake.url)
    try:
        created = await rest.create_call(
            to=CALLER,
            from_=LOCAL_NUMBER,
            url="https://edge.example.com/twilio/voice?call_id=c1",
            status_callback="https://edge.example.com/twilio/status?call_id=c1",
        )
        assert created.status == "queued" and created.sid in fake.calls
        await rest.transfer(created.sid, "+15555550123")
        assert await rest.hangup(created.sid) is True
        assert fake.calls[created.sid].status == "completed"
        assert await rest.hangup(created.sid) is False  # already over: not an error
        assert await rest.hangup("CA" + "0" * 32) is False  # unknown: nothing to end
        with pytest.raises(TwilioApiError) as info:
            await rest.transfer("CA" + "0" * 32, "+15555550123")
        assert (info.value.status, info.value.code) == (404, 20404)
        with pytest.raises(TwilioApiError) as info:
            await rest.create_call(
                to="555", from_=LOCAL_NUMBER, url="https://e/x", status_callback="https://e/y"
            )
        assert info.value.code == 21211
    finally:
        await rest.close()
    bad = TwilioRest(ACCOUNT_SID, "wrong-token", api_base_url=fake.url)
    try:
        with pytest.raises(TwilioApiError) as info:
            await bad.hangup("CA" + "0" * 32)
        assert (info.value.status, info.value.code) == (401, 20003)
    finally:
        await bad.close()
        await fake.close()
