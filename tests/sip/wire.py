"""Real-looking SIP traffic for the tests: trunk messages as they appear on the wire."""

from __future__ import annotations

EDGE = ("127.0.0.1", 5060)
PEER = ("203.0.113.7", 5060)

TWILIO_SDP = (
    "v=0\r\n"
    "o=root 1234567890 1234567890 IN IP4 54.172.60.2\r\n"
    "s=Twilio Media Gateway\r\n"
    "c=IN IP4 54.172.60.2\r\n"
    "t=0 0\r\n"
    "m=audio 18422 RTP/AVP 0 8 101\r\n"
    "a=rtpmap:0 PCMU/8000\r\n"
    "a=rtpmap:8 PCMA/8000\r\n"
    "a=rtpmap:101 telephone-event/8000\r\n"
    "a=fmtp:101 0-16\r\n"
    "a=ptime:20\r\n"
    "a=maxptime:150\r\n"
    "a=sendrecv\r\n"
)

SIPP_SDP = (
    "v=0\r\n"
    "o=user1 53655765 2353687637 IN IP4 127.0.0.1\r\n"
    "s=-\r\n"
    "c=IN IP4 127.0.0.1\r\n"
    "t=0 0\r\n"
    "m=audio 6000 RTP/AVP 8 101\r\n"
    "a=rtpmap:8 PCMA/8000\r\n"
    "a=rtpmap:101 telephone-event/8000\r\n"
    "a=fmtp:101 0-11,16\r\n"
)

ASTERISK_SDP = (
    "v=0\r\n"
    "o=root 1946510185 1946510185 IN IP4 10.0.0.9\r\n"
    "s=Asterisk PBX 18.10.0\r\n"
    "c=IN IP4 10.0.0.9\r\n"
    "t=0 0\r\n"
    "m=audio 14562 RTP/AVP 9 0 8 101\r\n"
    "a=rtpmap:9 G722/8000\r\n"
    "a=rtpmap:0 PCMU/8000\r\n"
    "a=rtpmap:8 PCMA/8000\r\n"
    "a=rtpmap:101 telephone-event/8000\r\n"
    "a=fmtp:101 0-16\r\n"
    "a=ptime:20\r\n"
    "a=maxptime:150\r\n"
    "a=sendrecv\r\n"
)


def with_length(head: str, body: str = "") -> bytes:
    """``head`` (lines joined by CRLF, no Content-Length) + Content-Length + body."""
    raw = body.encode()
    return f"{head}\r\nContent-Length: {len(raw)}\r\n\r\n".encode() + raw


def twilio_invite() -> bytes:
    head = (
        "INVITE sip:+14155550100@edge.example.com:5060;transport=udp SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 54.172.60.1:5060;branch=z9hG4bK4f3c.7a1b2c3d4e5f6a7b8c9d.0\r\n"
        "Max-Forwards: 69\r\n"
        "From: <sip:+14155550199@twilio.com>;tag=93750583_6772d868_4f9c9a2e\r\n"
        "To: <sip:+14155550100@edge.example.com>\r\n"
        "Call-ID: 1d2c3b4a5e6f7a8b9c0d1e2f3a4b5c6d@0.0.0.0\r\n"
        "CSeq: 1 INVITE\r\n"
        "Contact: <sip:+14155550199@54.172.60.1:5060;transport=udp>\r\n"
        "Record-Route: <sip:54.172.60.1:5060;lr;ftag=93750583_6772d868_4f9c9a2e>\r\n"
        "Allow: INVITE,ACK,CANCEL,OPTIONS,BYE,INFO,NOTIFY,UPDATE,PRACK,REFER\r\n"
        "Supported: timer\r\n"
        "Session-Expires: 1800;refresher=uas\r\n"
        "User-Agent: Twilio Gateway\r\n"
        "X-Twilio-CallSid: CA0123456789abcdef0123456789abcdef\r\n"
        "X-Twilio-AccountSid: AC0123456789abcdef0123456789abcdef\r\n"
        "Content-Type: application/sdp"
    )
    return with_length(head, TWILIO_SDP)


def asterisk_invite() -> bytes:
    head = (
        "INVITE sip:edge@10.0.0.5:5060 SIP/2.0\r\n"
        "Record-Route: <sip:10.0.0.2;lr;r2=on;ftag=as5a6f7b8c>\r\n"
        "Record-Route: <sip:192.0.2.2;lr;r2=on;ftag=as5a6f7b8c>\r\n"
        "Via: SIP/2.0/UDP 10.0.0.2;branch=z9hG4bK3c1.abc.0\r\n"
        "Via: SIP/2.0/UDP 10.0.0.9:5060;branch=z9hG4bK5f3a2b1c;rport=5060\r\n"
        "Max-Forwards: 69\r\n"
        'From: "Alice" <sip:1001@10.0.0.9>;tag=as5a6f7b8c\r\n'
        "To: <sip:edge@10.0.0.5:5060>\r\n"
        "Contact: <sip:1001@10.0.0.9:5060>\r\n"
        "Call-ID: 3f2e1d0c4b5a69788796a5b4c3d2e1f0@10.0.0.9:5060\r\n"
        "CSeq: 102 INVITE\r\n"
        "User-Agent: Asterisk PBX 18.10.0\r\n"
        "Allow: INVITE, ACK, CANCEL, OPTIONS, BYE, REFER, SUBSCRIBE, NOTIFY, INFO, PUBLISH\r\n"
        "Supported: replaces, timer\r\n"
        "Content-Type: application/sdp"
    )
    return with_length(head, ASTERISK_SDP)


def request(
    method: str,
    *,
    branch: str = "z9hG4bKb1",
    call_id: str = "call-1@203.0.113.7",
    from_tag: str = "ft1",
    to_tag: str | None = None,
    cseq: int = 1,
    cseq_method: str | None = None,
    body: str = "",
    extra: str = "",
    uri: str = "sip:abc123@127.0.0.1:5060",
    via_params: str = ";rport",
) -> bytes:
    to = "<sip:abc123@127.0.0.1>" + (f";tag={to_tag}" if to_tag else "")
    lines = [
        f"{method} {uri} SIP/2.0",
        f"Via: SIP/2.0/UDP 203.0.113.7:5060;branch={branch}{via_params}",
        "Max-Forwards: 70",
        f"From: <sip:+15551230000@203.0.113.7>;tag={from_tag}",
        f"To: {to}",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} {cseq_method or method}",
        "Contact: <sip:+15551230000@203.0.113.7:5060>",
    ]
    if body:
        lines.append("Content-Type: application/sdp")
    if extra:
        lines.append(extra.rstrip("\r\n"))
    return with_length("\r\n".join(lines), body)


def first_line(data: bytes) -> str:
    return data.split(b"\r\n", 1)[0].decode()


def status(data: bytes) -> int:
    return int(first_line(data).split()[1])
