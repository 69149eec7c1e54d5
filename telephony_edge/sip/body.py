"""The session description in a SIP body: plain, or one part of a multipart/mixed body.

SIP-I carriers (ITU-T Q.1912.5) send INVITEs whose body is ``multipart/mixed``:
the SDP and an encapsulated ISUP message (``application/ISUP``). RFC 5621 lets a
UA take the parts it understands: the edge takes the ``application/sdp`` part and
leaves the rest, instead of refusing the call 415. Parsing is the standard
library's MIME parser on a body the SIP parser has already bounded in size.
"""

from __future__ import annotations

import email.parser
import email.policy

SDP = "application/sdp"
MULTIPART = "multipart/mixed"


def media_type(content_type: str) -> str:
    """``type/subtype`` of a Content-Type, lower-cased, without parameters."""
    return content_type.split(";")[0].strip().lower()


def sdp_body(content_type: str, body: bytes) -> bytes | None:
    """The SDP a body carries, or None when it carries none (415, then)."""
    kind = media_type(content_type)
    if kind == SDP:
        return body
    if kind != MULTIPART:
        return None
    head = f"Content-Type: {content_type}\r\n\r\n".encode("latin-1", "replace")
    message = email.parser.BytesParser(policy=email.policy.compat32).parsebytes(head + body)
    if not message.is_multipart():
        return None
    for part in message.walk():
        if part.get_content_type() == SDP:
            payload = part.get_payload(decode=True)
            return payload if isinstance(payload, bytes) else None
    return None
