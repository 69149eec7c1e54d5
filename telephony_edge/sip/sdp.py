"""SDP (RFC 4566) for telephony, and RFC 3264 offer/answer for one audio stream.

Rules
-----
* :func:`parse_sdp` reads a session description strictly enough to be safe
  (bounded, each line ``x=value``, numbers checked, ``c=`` an IP address: a
  name would be resolved for every RTP packet) and keeps lines it does
  not interpret so that nothing is lost on the way through.
* :func:`negotiate` answers an offer: the first audio stream with a port and
  a codec we take is used, every other ``m=`` line is answered with port 0
  (RFC 3264 §6: the answer has as many media lines as the offer). The codec
  is the first of the offer's formats that the preference list allows
  (``order="offer"``, the default, as RFC 3264 §6.1 suggests), or the first
  of the preference list that the offer has (``order="local"``). Nothing in
  common → :class:`NoCommonCodec` (the UA answers 488).
* telephone-event: the offer's payload type is mirrored (96, 101, 110 …),
  picking the one whose clock rate is the chosen codec's SDP clock (8000 for
  G.722, PCMU and PCMA; G.722's 8000 is RFC 3551's historical error, its
  audio is 16 kHz). An event type at another clock only is not taken.
* Comfort noise (RFC 3389): taken when the offer lists CN at 8000 Hz (13,
  or a dynamic type mapped to it); the answer lists it, and the caller's CN
  packets set the level of the noise played to the agent in their silence.
  Our own stream stays encoded silence (every peer decodes it).
* SRTP (RFC 3711 with SDES keys, RFC 4568): ``RTP/SAVP`` and ``RTP/SAVPF``
  streams, and ``RTP/AVP(F)`` ones with ``a=crypto`` (best effort), are
  taken or refused as :mod:`~telephony_edge.sip.sdes` says for the call's
  :class:`~telephony_edge.sip.sdes.SrtpRules` (policy, TLS); a refusal is
  :class:`SrtpRefused` (488). The answer keeps the offer's profile and
  carries our key in ``a=crypto`` with the offer's tag.
* Families (RFC 4566 ``IN IP4`` / ``IN IP6``): a stream is taken only in a
  family the edge has an address in (:meth:`MediaConfig.address_for`: one,
  or both on a dual-stack edge), and :class:`LocalSession` writes ``o=`` and
  ``c=`` with the address of the call's family (:meth:`MediaConfig.for_family`),
  so an IPv6 offer is answered ``IN IP6`` and an IPv4 one ``IN IP4``. An
  IPv4-mapped address (``IN IP6 ::ffff:192.0.2.1``, RFC 5118 §4.9) is IPv4.
* Direction (session- or media-level; media wins): the answer mirrors
  sendonly → recvonly, recvonly → sendonly, inactive → inactive,
  sendrecv → sendrecv. ``c=0.0.0.0`` (RFC 2543 hold) counts as sendonly.
* :class:`LocalSession` owns our ``o=`` line: the same session id for the
  call, the version incremented each time the description we send changes
  (RFC 3264 §8), unchanged when we resend the same one.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from dataclasses import dataclass, field
from typing import Literal

from telephony_edge.sip import sdes
from telephony_edge.sip.family import Family, family_of
from telephony_edge.sip.sdes import SrtpRules, SrtpTerms

MAX_SDP_BYTES = 16_384
MAX_SDP_LINES = 256
DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")
MIRROR = {
    "sendrecv": "sendrecv",
    "sendonly": "recvonly",
    "recvonly": "sendonly",
    "inactive": "inactive",
}


class SdpError(ValueError):
    """A description we cannot read (the UA answers 400, or 488 in an ACK's case BYE)."""


class NoCommonCodec(SdpError):
    """Nothing in the offer that we take: answer 488."""


class SrtpRefused(NoCommonCodec):
    """The offer's SRTP (or its lack) is not what the call may do: 488; ``bad`` when an
    ``a=crypto`` line was malformed (the sender's fault, counted as bad input)."""

    def __init__(self, reason: str, bad: bool = False) -> None:
        super().__init__(reason)
        self.bad = bad


@dataclass(frozen=True, slots=True)
class Codec:
    name: str
    payload_type: int  # static RTP payload type (RFC 3551)
    clock_rate: int  # as written in SDP and in RTP timestamps
    sample_rate: int  # of the audio itself


CODECS: dict[str, Codec] = {
    "G722": Codec("G722", 9, 8000, 16000),
    "PCMU": Codec("PCMU", 0, 8000, 8000),
    "PCMA": Codec("PCMA", 8, 8000, 8000),
}
STATIC_PT = {c.payload_type: c for c in CODECS.values()}
CN_PT = 13  # RFC 3389 comfort noise's static payload type (RFC 3551)


@dataclass(frozen=True, slots=True)
class MediaConfig:
    """What we advertise: the address in c=/o=, codecs in order, ptime, rtcp."""

    address: str = "127.0.0.1"
    preferences: tuple[str, ...] = ("G722", "PCMU", "PCMA")
    order: Literal["offer", "local"] = "offer"
    wideband_first: bool = False  # G.722 whenever offered, ahead of ``order``
    ptime: int = 20
    telephone_event_pt: int = 101  # used in our own offers only
    rtcp_attribute: bool = True
    address6: str | None = None  # a dual-stack edge's IPv6 address (``address`` is IPv4)

    def address_for(self, family: Family) -> str | None:
        """Our address in ``family`` (4 or 6); None: the edge has none there."""
        if family == 6:
            return self.address6 or (self.address if ":" in self.address else None)
        return None if ":" in self.address else self.address

    def for_family(self, family: Family) -> MediaConfig:
        """One call's configuration: our address in ``family`` alone (its RTP socket is
        of one family, so its re-offers and answers must stay there)."""
        return dataclasses.replace(
            self, address=self.address_for(family) or self.address, address6=None
        )


# -- the description --------------------------------------------------------------


@dataclass(slots=True)
class Origin:
    username: str
    session_id: str
    version: int
    nettype: str
    addrtype: str
    address: str

    def __str__(self) -> str:
        return (
            f"{self.username} {self.session_id} {self.version} "
            f"{self.nettype} {self.addrtype} {self.address}"
        )


@dataclass(slots=True)
class Media:
    kind: str
    port: int
    proto: str
    formats: list[str]
    connection: str | None = None  # the address of c=, if media-level
    attributes: list[tuple[str, str | None]] = field(default_factory=list)
    other: list[str] = field(default_factory=list)  # i=, b=, k= lines as read

    def attribute(self, name: str) -> str | None:
        for n, v in self.attributes:
            if n == name:
                return v if v is not None else ""
        return None

    def rtpmap(self) -> dict[int, tuple[str, int]]:
        """Payload type → (encoding name upper-cased, clock rate); static types filled in."""
        out: dict[int, tuple[str, int]] = {}
        for fmt in self.formats:
            if _digits(fmt) and int(fmt) in STATIC_PT:
                c = STATIC_PT[int(fmt)]
                out[int(fmt)] = (c.name, c.clock_rate)
        for n, v in self.attributes:
            if n != "rtpmap" or v is None:
                continue
            pt_s, _, enc = v.partition(" ")
            name, _, rest = enc.strip().partition("/")
            clock_s = rest.partition("/")[0]
            if _digits(pt_s) and _digits(clock_s) and pt_s in self.formats:
                out[int(pt_s)] = (name.upper(), int(clock_s))
        return out

    def direction(self) -> str | None:
        for n, _ in self.attributes:
            if n in DIRECTIONS:
                return n
        return None


@dataclass(slots=True)
class SessionDescription:
    origin: Origin
    name: str = "-"
    connection: str | None = None
    attributes: list[tuple[str, str | None]] = field(default_factory=list)
    media: list[Media] = field(default_factory=list)
    timing: str = "0 0"

    def direction(self) -> str | None:
        for n, _ in self.attributes:
            if n in DIRECTIONS:
                return n
        return None

    def to_bytes(self) -> bytes:
        o = self.origin
        lines = ["v=0", f"o={o}", f"s={self.name}"]
        if self.connection is not None:
            lines.append(f"c=IN {_addrtype(self.connection)} {self.connection}")
        lines.append(f"t={self.timing}")
        lines.extend(_attr_lines(self.attributes))
        for m in self.media:
            lines.append(f"m={m.kind} {m.port} {m.proto} {' '.join(m.formats)}")
            lines.extend(m.other)
            if m.connection is not None:
                lines.append(f"c=IN {_addrtype(m.connection)} {m.connection}")
            lines.extend(_attr_lines(m.attributes))
        return ("\r\n".join(lines) + "\r\n").encode()


def _digits(text: str, max_len: int = 10) -> bool:
    """ASCII digits (``str.isdigit`` takes ``²``, which ``int()`` refuses), bounded."""
    return 0 < len(text) <= max_len and text.isascii() and text.isdigit()


def _addrtype(address: str) -> str:
    return "IP6" if ":" in address else "IP4"


def _attr_lines(attrs: list[tuple[str, str | None]]) -> list[str]:
    return [f"a={n}" if v is None else f"a={n}:{v}" for n, v in attrs]


def _connection(value: str) -> str:
    parts = value.split()
    if len(parts) != 3 or parts[0] != "IN" or parts[1] not in ("IP4", "IP6"):
        raise SdpError(f"bad c= line {value!r}")
    address = parts[2].split("/")[0]  # multicast TTL/count not used
    try:  # a name would be resolved by sendto, on the event loop, for every RTP packet
        ipaddress.ip_address(address)
    except ValueError:
        raise SdpError(f"c= address {address[:60]!r} is not an IP address") from None
    return address


def parse_sdp(data: bytes) -> SessionDescription:
    """Parse an SDP body (RFC 4566 §5), strictly and bounded."""
    if len(data) > MAX_SDP_BYTES:
        raise SdpError("SDP too large")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise SdpError("SDP is not UTF-8") from None
    lines = [ln.rstrip("\r") for ln in text.split("\n") if ln.strip()]
    if len(lines) > MAX_SDP_LINES:
        raise SdpError("too many SDP lines")
    if not lines or lines[0] != "v=0":
        raise SdpError("SDP must start with v=0")
    origin: Origin | None = None
    sdp: SessionDescription | None = None
    name = "-"
    session_c: str | None = None
    timing = "0 0"
    session_attrs: list[tuple[str, str | None]] = []
    media: list[Media] = []
    for line in lines[1:]:
        if len(line) < 2 or line[1] != "=":
            raise SdpError(f"bad SDP line {line[:40]!r}")
        kind, value = line[0], line[2:]
        if kind == "o":
            parts = value.split()
            if len(parts) != 6 or not _digits(parts[2], 30):
                raise SdpError(f"bad o= line {value!r}")
            origin = Origin(parts[0], parts[1], int(parts[2]), parts[3], parts[4], parts[5])
        elif kind == "m":
            parts = value.split()
            if len(parts) < 4:
                raise SdpError(f"bad m= line {value!r}")
            port_s = parts[1].split("/")[0]
            if not _digits(port_s, 5) or int(port_s) > 65535:
                raise SdpError(f"bad port in m= line {value!r}")
            media.append(Media(parts[0], int(port_s), parts[2], parts[3:]))
        elif kind == "c":
            if media:
                media[-1].connection = _connection(value)
            else:
                session_c = _connection(value)
        elif kind == "a":
            n, colon, v = value.partition(":")
            attr = (n, v if colon else None)
            (media[-1].attributes if media else session_attrs).append(attr)
        elif kind == "s" and not media:
            name = value or "-"
        elif kind == "t" and not media:
            timing = value
        elif media:
            media[-1].other.append(line)
    if origin is None:
        raise SdpError("SDP without o= line")
    sdp = SessionDescription(origin, name, session_c, session_attrs, media, timing)
    for m in media:
        if m.kind == "audio" and m.port and m.connection is None and session_c is None:
            raise SdpError("audio stream without a connection address")
    return sdp


# -- offer/answer ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Negotiated:
    """The outcome for the media shell: where to send, what, which way."""

    codec: Codec
    payload_type: int
    event_payload_type: int | None
    remote_address: str
    remote_port: int
    direction: str  # ours, as in the answer
    ptime: int | None
    media_index: int
    rtcp: tuple[str, int] | None = None  # the offer's a=rtcp (RFC 3605), if any
    cn_payload_type: int | None = None  # RFC 3389 comfort noise, when both sides take it
    srtp: SrtpTerms | None = None  # SDES-keyed SRTP, when negotiated (sip/sdes.py)

    @property
    def on_hold(self) -> bool:
        """The peer will not listen to us (we must not send)."""
        return self.direction in ("recvonly", "inactive")


def _stream_direction(sdp: SessionDescription, m: Media) -> str:
    direction = m.direction() or sdp.direction() or "sendrecv"
    address = m.connection or sdp.connection or ""
    if address in ("0.0.0.0", "::") and direction == "sendrecv":
        direction = "sendonly"  # RFC 2543 hold: don't send to me
    return direction


def _rtcp(m: Media, address: str) -> tuple[str, int] | None:
    """``a=rtcp:<port> [IN IP4 <address>]`` (RFC 3605); None when absent or unreadable."""
    parts = (m.attribute("rtcp") or "").split()
    port = parts[0] if parts else ""
    if not (port.isascii() and port.isdigit() and len(port) <= 5 and 0 < int(port) < 65536):
        return None
    if len(parts) == 4 and parts[1] == "IN":
        try:
            address = _connection(" ".join(parts[1:]))
        except SdpError:
            return None
    return address, int(parts[0])


def _pick(m: Media, config: MediaConfig) -> tuple[int, Codec, int | None, int | None]:
    rtpmap = m.rtpmap()
    allowed = [n.upper() for n in config.preferences if n.upper() in CODECS]
    offered: list[tuple[int, Codec]] = []
    for fmt in m.formats:
        if not _digits(fmt) or int(fmt) not in rtpmap:
            continue
        name, clock = rtpmap[int(fmt)]
        codec = CODECS.get(name)
        if codec is not None and name in allowed and clock == codec.clock_rate:
            offered.append((int(fmt), codec))
    if not offered:
        raise NoCommonCodec("no common codec")
    if config.order == "local":
        offered.sort(key=lambda pc: allowed.index(pc[1].name))
    if config.wideband_first:
        offered.sort(key=lambda pc: pc[1].sample_rate != 16000)  # stable: order kept within
    pt, codec = offered[0]
    clock = codec.clock_rate
    return pt, codec, _format(m, rtpmap, "TELEPHONE-EVENT", clock), _format(m, rtpmap, "CN", clock)


def _format(m: Media, rtpmap: dict[int, tuple[str, int]], name: str, clock: int) -> int | None:
    """The offer's payload type for ``name`` at ``clock`` (telephone-event, CN), if any."""
    static = {CN_PT: ("CN", 8000)}  # RFC 3551's static type, with or without an rtpmap
    return next(
        (
            p
            for p in (int(f) for f in m.formats if _digits(f))
            if rtpmap.get(p, static.get(p)) == (name, clock)
        ),
        None,
    )


def _crypto(m: Media) -> list[str]:
    return [v for n, v in m.attributes if n == "crypto" and v is not None]


def negotiate(
    offer: SessionDescription,
    config: MediaConfig,
    rules: SrtpRules | None = sdes.DEFAULT_RULES,
    keep: SrtpTerms | None = None,
) -> Negotiated:
    """Choose what to answer to ``offer`` (raises :class:`NoCommonCodec`); ``rules``: the
    call's SRTP policy (None: SRTP not judged, for an answer), ``keep``: its SRTP so far
    (a re-offer keeps our key)."""
    last_error: SdpError = NoCommonCodec("no audio stream")
    for index, m in enumerate(offer.media):
        if m.kind != "audio" or m.port == 0 or m.proto.upper() not in sdes.RTP_PROFILES:
            continue
        address = m.connection or offer.connection or ""
        family = family_of(address)
        if config.address_for(family) is None:
            last_error = NoCommonCodec(f"an IPv{family} stream: the edge has no IPv{family}")
            continue
        try:
            pt, codec, event_pt, cn_pt = _pick(m, config)
            srtp = None if rules is None else sdes.choose(m.proto, _crypto(m), rules, keep)
        except NoCommonCodec as exc:
            last_error = exc
            continue
        except sdes.Refused as exc:
            last_error = SrtpRefused(str(exc), exc.bad)
            continue
        ptime_s = m.attribute("ptime")
        return Negotiated(
            codec=codec,
            payload_type=pt,
            event_payload_type=event_pt,
            remote_address=address,
            remote_port=m.port,
            direction=MIRROR[_stream_direction(offer, m)],
            ptime=int(ptime_s) if ptime_s and _digits(ptime_s) else None,
            media_index=index,
            rtcp=_rtcp(m, address),
            cn_payload_type=cn_pt,
            srtp=srtp,
        )
    raise last_error


def accept_answer(
    answer: SessionDescription, config: MediaConfig, offered_crypto: str | None = None
) -> Negotiated:
    """Read the answer to OUR offer (delayed offer: the ACK's body); ``offered_crypto``:
    the ``a=crypto`` our offer carried (:meth:`LocalSession.offer`), whose answer line
    keys the SRTP (raises :class:`SrtpRefused` if there is none for a ``RTP/SAVP`` offer)."""
    # the same reading as an offer: the first codec of ours it lists, and the
    # mirror of the direction it states is ours; its a=crypto is read below
    reading = dataclasses.replace(config, order="offer", wideband_first=False)
    chosen = negotiate(answer, reading, None)
    m = answer.media[chosen.media_index]
    lines = _crypto(m)
    if offered_crypto is None or not (lines or m.proto.upper() in sdes.SAVP):
        if lines and offered_crypto is None:
            raise SrtpRefused("a=crypto in the answer to an offer without it", bad=True)
        return chosen
    try:
        srtp = sdes.accept(offered_crypto, lines)
    except sdes.Refused as exc:
        raise SrtpRefused(str(exc), exc.bad) from None
    return dataclasses.replace(chosen, srtp=srtp)


class LocalSession:
    """Our side of one call's SDP: the o= line's id and version, and the port."""

    def __init__(
        self,
        config: MediaConfig,
        port: int,
        session_id: str,
        version: int = 0,
        origin: str | None = None,
    ) -> None:
        self.config = config
        self.port = port
        self.session_id = session_id
        self.version = version
        # the o= address when it is not ours: a call resumed from another worker keeps
        # the session's (RFC 3264 §8: the origin stays, the version goes up)
        self.origin = origin
        self._last_media: list[Media] | None = None
        self.offered_crypto: str | None = None  # the a=crypto of our last offer

    def _describe(self, media: list[Media]) -> bytes:
        if self._last_media is not None and media != self._last_media:
            self.version += 1
        self._last_media = media
        address = self.config.address
        at = self.origin or address
        origin = Origin("-", self.session_id, self.version, "IN", _addrtype(at), at)
        sdp = SessionDescription(origin, "telephony-edge", address, [], media)
        return sdp.to_bytes()

    def _audio(
        self,
        formats: list[tuple[int, str, int]],
        direction: str,
        proto: str = "RTP/AVP",
        crypto: str | None = None,
    ) -> Media:
        attrs: list[tuple[str, str | None]] = []
        for pt, name, clock in formats:
            attrs.append(("rtpmap", f"{pt} {name}/{clock}"))
            if name == "telephone-event":
                attrs.append(("fmtp", f"{pt} 0-16"))
        attrs.append(("ptime", str(self.config.ptime)))
        if self.config.rtcp_attribute:
            attrs.append(("rtcp", str(self.port + 1)))
        attrs.append((direction, None))
        if crypto is not None:
            attrs.append(("crypto", crypto))
        return Media("audio", self.port, proto, [str(f[0]) for f in formats], None, attrs)

    def answer(self, offer: SessionDescription, chosen: Negotiated) -> bytes:
        """Our answer: the chosen stream, every other offered stream refused (port 0)."""
        media: list[Media] = []
        for index, m in enumerate(offer.media):
            if index != chosen.media_index:
                media.append(Media(m.kind, 0, m.proto, m.formats[:1]))
                continue
            formats = [(chosen.payload_type, chosen.codec.name, chosen.codec.clock_rate)]
            if chosen.event_payload_type is not None:
                formats.append((chosen.event_payload_type, "telephone-event", 8000))
            if chosen.cn_payload_type is not None:
                formats.append((chosen.cn_payload_type, "CN", 8000))
            # the answer's transport is the offer's (RFC 3264 §6): RTP/AVPF stays AVPF,
            # RTP/SAVP(F) stays SAVP(F); best-effort SRTP answers RTP/AVP with a=crypto
            proto = m.proto.upper()
            crypto = chosen.srtp.attribute() if chosen.srtp is not None else None
            media.append(self._audio(formats, chosen.direction, proto, crypto))
        return self._describe(media)

    @property
    def profile(self) -> str | None:
        """The RTP profile of our last audio description (``RTP/SAVP`` …), if any."""
        audio = [m for m in self._last_media or [] if m.kind == "audio" and m.port]
        return audio[0].proto if audio else None

    def again(self) -> bytes:
        """The last description unchanged, same version (a refresh re-INVITE, RFC 3264 §8)."""
        assert self._last_media is not None, "nothing described yet"
        return self._describe(self._last_media)

    def offer(
        self,
        direction: str = "sendrecv",
        crypto: str | None = None,
        secure: bool = False,
        formats: list[tuple[int, str, int]] | None = None,
    ) -> bytes:
        """Our own offer (delayed offer, re-INVITE without SDP): every preferred codec,
        or ``formats`` (payload type, name, clock: a resumed call's, RFC 3264 §8.3.2);
        with ``crypto`` (:func:`~telephony_edge.sip.sdes.offer`) SRTP keyed by it,
        ``RTP/SAVP`` when ``secure`` (required), else best effort (``RTP/AVP``)."""
        if formats is None:
            formats = [
                (CODECS[n].payload_type, n, CODECS[n].clock_rate)
                for n in self.config.preferences
                if n in CODECS
            ]
            formats.append((self.config.telephone_event_pt, "telephone-event", 8000))
            formats.append((CN_PT, "CN", 8000))
        self.offered_crypto = crypto
        proto = "RTP/SAVP" if secure and crypto is not None else "RTP/AVP"
        return self._describe([self._audio(formats, direction, proto, crypto)])
