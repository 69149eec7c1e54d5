"""A SIP call's dialog as live state: what a worker needs to carry on a call another began.

Theory of operation
-------------------
A SIP call outlives its worker when the peer's requests in the dialog reach
an address that survives the worker (``sip.dialog_proxy``: the proxy in
front, which looks the dialog's owner up in Redis) and a new worker can
speak for the dialog. :class:`DialogSnapshot` is everything that takes, read
from the UA's call (:func:`snapshot_of`) and kept in the call's live state
(``calls/live_state.py``: written at most once a second, and only when it
changed):

* the dialog (RFC 3261 §12): Call-ID, both tags, both URIs, the remote
  target, the route set, both CSeqs, the transport, SIPS, our Contact, and
  where the peer's requests came from (the flow, behind NAT or not);
* the media: the peer's RTP address, the codec and payload types agreed
  (the audio's, telephone-event's, comfort noise's), ptime, direction;
* our SDP's ``o=`` session id, version and address (RFC 3264 §8: a new
  offer in the session keeps the id and raises the version by one);
* the session timer's interval and who refreshes (RFC 4028), and the
  call's SRTP rules;
* the edge's call id.

SRTP keys are not in it: a worker that resumes an SRTP call offers keys of
its own (SDES: each side announces the key it sends with).

:meth:`DialogSnapshot.to_dict` is JSON; :meth:`DialogSnapshot.from_dict`
reads one back and raises ValueError for anything out of shape or bounds
(the coordinator is trusted, but a record from another version must fail
one resumption, not the worker).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

from telephony_edge.sip.dialog import Address, Dialog, DialogState
from telephony_edge.sip.family import Family
from telephony_edge.sip.sdes import Policy, SrtpRules
from telephony_edge.sip.sdp import CODECS, Negotiated
from telephony_edge.sip.ua_records import Call

VERSION = 1
MAX_TEXT = 2048  # characters of one header value kept (URIs, routes, tags)
MAX_ROUTES = 16
MAX_SEQ = 2**31 - 1  # RFC 3261 §8.1.1.5: a CSeq below 2**31
DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")
POLICIES = ("none", "optional", "required")


@dataclass(frozen=True, slots=True)
class MediaState:
    """The call's media as agreed: where the peer listens, what flows, which way."""

    address: str
    port: int
    codec: str
    payload_type: int
    event_payload_type: int | None
    cn_payload_type: int | None
    ptime: int | None
    direction: str  # ours, as in our last answer or the answer to our offer
    srtp: bool  # the call's media was SRTP (a resumption offers SRTP again)
    profile: str  # of our last description (RTP/SAVP: SRTP required of the stream)

    def negotiated(self) -> Negotiated:
        """The media as the leg takes it (until the peer answers the new offer)."""
        return Negotiated(
            CODECS[self.codec],
            self.payload_type,
            self.event_payload_type,
            self.address,
            self.port,
            self.direction,
            self.ptime,
            0,
            cn_payload_type=self.cn_payload_type,
        )

    def formats(self) -> list[tuple[int, str, int]]:
        """The payload types to offer again: the same numbers for the same formats."""
        codec = CODECS[self.codec]
        formats = [(self.payload_type, codec.name, codec.clock_rate)]
        if self.event_payload_type is not None:
            formats.append((self.event_payload_type, "telephone-event", 8000))
        if self.cn_payload_type is not None:
            formats.append((self.cn_payload_type, "CN", 8000))
        return formats


@dataclass(frozen=True, slots=True)
class DialogSnapshot:
    """One SIP call's dialog and media, enough for another worker (module docstring)."""

    record_id: str  # the edge's call id
    call_id: str
    local_tag: str
    remote_tag: str
    local_uri: str
    remote_uri: str
    remote_target: str
    route_set: tuple[str, ...]
    local_seq: int
    remote_seq: int
    local_contact: str
    transport: str
    secure: bool
    flow: Address  # where the peer's requests came from (the proxy, or the peer)
    nated: bool
    family: Family
    media: MediaState
    sdp_session_id: str
    sdp_version: int
    sdp_origin: str  # the address in our o= line
    session_interval: float | None  # RFC 4028, when a session timer runs
    we_refresh: bool
    use_update: bool
    srtp_policy: Policy
    srtp_keys_safe: bool

    def dialog(self) -> Dialog:
        """The dialog, confirmed, as this worker keeps it."""
        return Dialog(
            call_id=self.call_id,
            local_tag=self.local_tag,
            remote_tag=self.remote_tag,
            local_uri=self.local_uri,
            remote_uri=self.remote_uri,
            remote_target=self.remote_target,
            route_set=list(self.route_set),
            local_seq=self.local_seq,
            remote_seq=self.remote_seq,
            local_contact=self.local_contact,
            transport=self.transport,
            state=DialogState.CONFIRMED,
            secure=self.secure,
        )

    @property
    def srtp_rules(self) -> SrtpRules:
        return SrtpRules(self.srtp_policy, self.srtp_keys_safe)

    def to_dict(self) -> dict[str, Any]:
        media = self.media
        return {
            "v": VERSION,
            "record_id": self.record_id,
            "call_id": self.call_id,
            "local_tag": self.local_tag,
            "remote_tag": self.remote_tag,
            "local_uri": self.local_uri,
            "remote_uri": self.remote_uri,
            "remote_target": self.remote_target,
            "route_set": list(self.route_set),
            "local_seq": self.local_seq,
            "remote_seq": self.remote_seq,
            "local_contact": self.local_contact,
            "transport": self.transport,
            "secure": self.secure,
            "flow": [self.flow[0], self.flow[1]],
            "nated": self.nated,
            "family": self.family,
            "media": {
                "address": media.address,
                "port": media.port,
                "codec": media.codec,
                "pt": media.payload_type,
                "event_pt": media.event_payload_type,
                "cn_pt": media.cn_payload_type,
                "ptime": media.ptime,
                "direction": media.direction,
                "srtp": media.srtp,
                "profile": media.profile,
            },
            "sdp": {
                "session_id": self.sdp_session_id,
                "version": self.sdp_version,
                "origin": self.sdp_origin,
            },
            "session": None
            if self.session_interval is None
            else {
                "interval": round(self.session_interval),
                "we_refresh": self.we_refresh,
                "use_update": self.use_update,
            },
            "srtp": {"policy": self.srtp_policy, "keys_safe": self.srtp_keys_safe},
        }

    @classmethod
    def from_dict(cls, data: Any) -> DialogSnapshot:
        """A snapshot written by :meth:`to_dict`; ValueError for anything else."""
        doc = _mapping(data, "snapshot")
        if doc.get("v") != VERSION:
            raise ValueError(f"dialog snapshot version {doc.get('v')!r} (this worker reads 1)")
        media, sdp, srtp = (_mapping(doc.get(k), k) for k in ("media", "sdp", "srtp"))
        session = doc.get("session")
        timer = None if session is None else _mapping(session, "session")
        flow = doc.get("flow")
        if not (isinstance(flow, list) and len(flow) == 2):
            raise ValueError("flow is not [host, port]")
        routes = doc.get("route_set")
        if not (isinstance(routes, list) and len(routes) <= MAX_ROUTES):
            raise ValueError(f"route_set is not a list of at most {MAX_ROUTES}")
        codec = _text(media, "codec", 16)
        if codec not in CODECS:
            raise ValueError(f"codec {codec!r} is not one the edge has")
        direction = _text(media, "direction", 16)
        if direction not in DIRECTIONS:
            raise ValueError(f"direction {direction!r}")
        family = doc.get("family")
        policy = _text(srtp, "policy", 16)
        if family not in (4, 6) or policy not in POLICIES:
            raise ValueError("family or SRTP policy out of range")
        transport = _text(doc, "transport", 8).upper()
        if transport not in ("UDP", "TCP", "TLS"):
            raise ValueError(f"transport {transport!r}")
        return cls(
            record_id=_text(doc, "record_id", 128),
            call_id=_text(doc, "call_id"),
            local_tag=_text(doc, "local_tag", 256),
            remote_tag=_text(doc, "remote_tag", 256, empty=True),  # RFC 2543 peers have none
            local_uri=_text(doc, "local_uri"),
            remote_uri=_text(doc, "remote_uri"),
            remote_target=_text(doc, "remote_target"),
            route_set=tuple(_text({"r": r}, "r") for r in routes),
            local_seq=_int(doc, "local_seq", MAX_SEQ),
            remote_seq=_int(doc, "remote_seq", MAX_SEQ),
            local_contact=_text(doc, "local_contact"),
            transport=transport,
            secure=_bool(doc, "secure"),
            flow=(_text({"h": flow[0]}, "h", 256), _int({"p": flow[1]}, "p", 65535)),
            nated=_bool(doc, "nated"),
            family=cast(Family, family),
            media=MediaState(
                address=_text(media, "address", 256),
                port=_int(media, "port", 65535),
                codec=codec,
                payload_type=_int(media, "pt", 127),
                event_payload_type=_optional_int(media, "event_pt", 127),
                cn_payload_type=_optional_int(media, "cn_pt", 127),
                ptime=_optional_int(media, "ptime", 1000),
                direction=direction,
                srtp=_bool(media, "srtp"),
                profile=_text(media, "profile", 16),
            ),
            sdp_session_id=_text(sdp, "session_id", 64),
            sdp_version=_int(sdp, "version", 2**62),
            sdp_origin=_text(sdp, "origin", 256),
            session_interval=None if timer is None else float(_int(timer, "interval", 86400)),
            we_refresh=timer is not None and _bool(timer, "we_refresh"),
            use_update=timer is not None and _bool(timer, "use_update"),
            srtp_policy=cast(Policy, policy),
            srtp_keys_safe=_bool(srtp, "keys_safe"),
        )


def snapshot_of(call: Call, record_id: str) -> DialogSnapshot | None:
    """The snapshot of a confirmed call with agreed media (None before that)."""
    dialog, media, local = call.dialog, call.media, call.local
    if media is None or local is None or dialog.state is not DialogState.CONFIRMED:
        return None
    session = call.session
    return DialogSnapshot(
        record_id=record_id,
        call_id=dialog.call_id,
        local_tag=dialog.local_tag,
        remote_tag=dialog.remote_tag,
        local_uri=dialog.local_uri,
        remote_uri=dialog.remote_uri,
        remote_target=dialog.remote_target,
        route_set=tuple(dialog.route_set),
        local_seq=dialog.local_seq,
        remote_seq=dialog.remote_seq,
        local_contact=dialog.local_contact,
        transport=dialog.transport,
        secure=dialog.secure,
        flow=call.source,
        nated=call.nated,
        family=call.family,
        media=MediaState(
            address=media.remote_address,
            port=media.remote_port,
            codec=media.codec.name,
            payload_type=media.payload_type,
            event_payload_type=media.event_payload_type,
            cn_payload_type=media.cn_payload_type,
            ptime=media.ptime,
            direction=media.direction,
            srtp=media.srtp is not None,
            profile=local.profile or "RTP/AVP",
        ),
        sdp_session_id=local.session_id,
        sdp_version=local.version,
        sdp_origin=local.origin or local.config.address,
        session_interval=None if session is None else session.interval,
        we_refresh=session is not None and session.we_refresh,
        use_update=session is not None and session.use_update,
        srtp_policy=call.srtp_rules.policy,
        srtp_keys_safe=call.srtp_rules.keys_safe,
    )


def _mapping(value: Any, name: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"{name} is not an object")
    return value


def _text(doc: dict[str, Any], name: str, limit: int = MAX_TEXT, empty: bool = False) -> str:
    value = doc.get(name)
    least = 0 if empty else 1
    if not isinstance(value, str) or not least <= len(value) <= limit or not value.isprintable():
        raise ValueError(f"{name} is not a printable string of at most {limit} characters")
    return value


def _int(doc: dict[str, Any], name: str, limit: int) -> int:
    value = doc.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= limit:
        raise ValueError(f"{name} is not an integer of 0-{limit}")
    return value


def _optional_int(doc: dict[str, Any], name: str, limit: int) -> int | None:
    return None if doc.get(name) is None else _int(doc, name, limit)


def _bool(doc: dict[str, Any], name: str) -> bool:
    value = doc.get(name)
    if not isinstance(value, bool):
        raise ValueError(f"{name} is not true or false")
    return value
