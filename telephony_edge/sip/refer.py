"""Blind transfer by REFER (RFC 3515): the Refer-To the trunk wants, and the sipfrag it reports.

The edge, as transferor, asks the trunk (the transferee) to call the target
and reads the outcome from the NOTIFYs of the implicit subscription, whose
body is a ``message/sipfrag`` (RFC 3420) holding the status line of the
trunk's INVITE to the target. PSTN trunks want a number as ``tel:`` (Twilio's
Elastic SIP Trunking with transfer to PSTN), PBXs as ``sip:number@host``: the
scheme is the operator's choice; a ``sip:`` destination is sent as given.
The :class:`~telephony_edge.sip.ua.UserAgent` keeps the transfer's state.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from telephony_edge.sip.transaction import Key

_STATUS_LINE = re.compile(rb"\s*SIP/2\.0\s+([1-6]\d\d)\b")


@dataclass(slots=True)
class Referral:
    """One call's transfer under way."""

    key: Key  # the REFER's client transaction
    target: str
    accepted: bool = False  # the trunk answered 2xx (202)
    deadline: float | None = None  # for the final NOTIFY, once accepted


def refer_to_uri(destination: str, scheme: str, host: str) -> str:
    """The Refer-To URI for a normalised destination (E.164 number or ``sip:`` URI)."""
    if not destination.startswith("+"):
        return destination
    if scheme == "tel":
        return f"tel:{destination}"
    return f"sip:{destination}@{host}"


def sipfrag_status(body: bytes) -> int | None:
    """The status code of a ``message/sipfrag`` body's status line, None if it has none."""
    match = _STATUS_LINE.match(body[:200])
    return int(match.group(1)) if match else None


def is_refer_event(event: str) -> bool:
    """``Event: refer`` (with or without ``;id=<cseq>``)."""
    return event.split(";")[0].strip().lower() == "refer"
