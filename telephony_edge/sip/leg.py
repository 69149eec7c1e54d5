"""The SIP call's media leg: RTP and RTCP sockets, G.722 or G.711 both ways, pushed by the pacer.

Theory of operation
-------------------
Caller audio arrives on the leg's own UDP socket
(:class:`~telephony_edge.sip.rtp_socket.RtpProtocol`), bound by
:class:`~telephony_edge.sip.rtp_socket.RtpPorts` on a random even port of the
configured range (the next call's port cannot be guessed from this one's).
Each datagram goes through :class:`~telephony_edge.sip.rtp.RtpInbound`
(source rule, reorder, conceal, telephone-events), is decoded to canonical
PCM16 16 kHz (G.722 is 16 kHz already; G.711 is upsampled) and cut into 20 ms
frames (peers send 20 or 30 ms packets), and queued for :meth:`SipLeg.recv`.
The queue is bounded: a bridge that stops reading loses the oldest audio,
counted, rather than the worker's memory.

Who may send the caller's RTP is the call's
:class:`~telephony_edge.sip.rtp_source.SourceLearner`: the SDP's address at
once, a NAT'd source after ``learn_packets`` in-sequence packets within
``learn_window_s`` of answer or of a media change (a re-INVITE or UPDATE that
moves media opens a new window), never a stranger mid-call. Packets from
anyone else are dropped, counted in
``telephony_edge_rtp_foreign_packets_total`` and logged as a warning naming
the call (the first, then at most one line every ``FOREIGN_WARN_EVERY_S``
with the count since).

Agent audio leaves in :meth:`SipLeg.send_frame`, called by the worker's pacer
every 20 ms while the agent speaks: encode, number, and ``sendto`` at once to
the caller's RTP peer (symmetric RTP), or to the SDP's address until there is
one. In the same tick, after playout, the pacer calls the leg again: a slot
the agent left empty gets a packet of encoded silence, so the caller receives
RTP every 20 ms from the first media description to the end, and nothing but
RTCP while it holds the call (:mod:`telephony_edge.sip.rtp_out`: timestamps
and sequence numbers continuous across silence and hold, the marker bit on
each agent talkspurt). Nothing is buffered here, so ``playout_lead_frames``
is 0 and :meth:`clear` has nothing to flush. With ``sip.early_media`` the leg
exists from the 183 with our SDP: its stream starts then, while the caller's
RTP is taken only from the answer (:meth:`SipLeg.hear`), when the agent starts.

RTCP (:mod:`telephony_edge.sip.rtcp`) runs on the RTP port + 1 (the SDP's
``a=rtcp``), bound next to the RTP socket, on hold too (RFC 3264 §5.1); a
sender report's RTP timestamp is the stream's at the report's NTP time.
RTCP multiplexed on the RTP port (RFC 5761) is read as well. The caller's
RTCP is taken from where the source rule says (the offer's ``a=rtcp``, the
peer's port + 1, or the peer's host carrying the peer's SSRC), and ours goes
back there. One timer task per call sends a report every interval (RFC 3550
§6.3) and watches for RTP inactivity: no packet from the caller for
``rtp_timeout_s`` while both sides send (not on hold) ends the leg with
``LegEnded(timeout=True)``, so the call ends ``timeout`` and the edge sends
BYE. The statistics (loss, jitter, late
packets, round-trip time) go to the Prometheus metrics at each report and to
:meth:`SipLeg.media_stats` at the end.

Call control goes through the SIP side (:class:`CallControl`): the edge's
hang-up sends BYE; a BYE from the caller ends the leg (:meth:`SipLeg.ended`).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from telephony_edge import metrics
from telephony_edge.audio.frames import FRAME_BYTES, FrameSplitter
from telephony_edge.audio.g711 import Law
from telephony_edge.audio.g722 import G722Decoder, G722Encoder
from telephony_edge.audio.transcode import G711Decoder, G711Encoder
from telephony_edge.calls.leg import Capabilities, Dtmf, Leg, LegEnded, LegEvent, LegInfo
from telephony_edge.calls.pacing import Pacer
from telephony_edge.sip.rtcp import RR, SR, RtcpSession, build_bye, report_interval, sender_ssrc
from telephony_edge.sip.rtp import Address, Audio, Held, InboundEvent, RtpInbound, RtpSender
from telephony_edge.sip.rtp_out import OutboundStream
from telephony_edge.sip.rtp_socket import RtcpProtocol, RtpProtocol
from telephony_edge.sip.rtp_source import LEARN_PACKETS, LEARN_WINDOW_S, SourceLearner
from telephony_edge.sip.sdp import Negotiated
from telephony_edge.sip.sendto import send_datagram

log = logging.getLogger(__name__)

MAX_QUEUED_EVENTS = 250  # 5 s of caller audio
SEND_BUFFER_LIMIT = 64 * 1024
DRAIN_AFTER_S = 0.12  # no RTP for this long while packets wait behind a gap: release them
_DROPPED = metrics.FRAMES_DROPPED.labels(reason="sip_backlog")
_RECEIVED = metrics.SIP_RTP_PACKETS.labels(outcome="received")
_LOST = metrics.SIP_RTP_PACKETS.labels(outcome="lost")
_LATE = metrics.SIP_RTP_PACKETS.labels(outcome="late")
_RTCP_SENT = metrics.SIP_RTCP_PACKETS.labels(outcome="sent")
_RTCP_RECEIVED = metrics.SIP_RTCP_PACKETS.labels(outcome="received")
_RTCP_MALFORMED = metrics.SIP_RTCP_PACKETS.labels(outcome="malformed")
_RTCP_STRANGER = metrics.SIP_RTCP_PACKETS.labels(outcome="stranger")
_FOREIGN = {p: metrics.RTP_FOREIGN_PACKETS.labels(protocol=p) for p in ("rtp", "rtcp")}
FOREIGN_WARN_EVERY_S = 10.0  # one warning per call per this long, with the count since
_RNG = random.Random()
LAWS = {"PCMU": Law.ULAW, "PCMA": Law.ALAW}


class Decoder(Protocol):
    def decode(self, payload: bytes) -> bytes: ...


class Encoder(Protocol):
    def encode(self, frame: bytes) -> bytes: ...

    def reset(self) -> None: ...


def codec_pair(name: str, packet_bytes: int = 160) -> tuple[Decoder, Encoder]:
    """Stateful per-call decoder and encoder for a negotiated codec name.

    ``packet_bytes``, the caller's audio payload size, sizes G.711's upsampler
    for its fast path (whole packets: 30 ms ones cost a fifth of the general path).
    """
    if name == "G722":
        return G722Decoder(), G722Encoder()
    law = LAWS[name]
    ok = packet_bytes % 80 == 0 and 80 <= packet_bytes <= 480  # 10-60 ms
    return G711Decoder(law, packet_bytes // 8 if ok else 20), G711Encoder(law)


class CallControl(Protocol):
    """What the leg asks of the SIP side (the UDP shell)."""

    def hangup(self, ref: str) -> None:
        """Send BYE (or a final answer) for the call ``ref`` if it is still up."""

    def release(self, ref: str) -> None:
        """The leg is closed: forget it (its RTP port is free again)."""

    async def transfer(self, ref: str, destination: str) -> None:
        """REFER the call to ``destination``; return once done, raise if it failed."""


class SipLeg(Leg):
    """One SIP call's RTP media; see the module docstring."""

    capabilities = Capabilities(clear=True, transfer_to_number=True, transfer_to_sip=True)
    playout_lead_frames = 0

    def __init__(
        self,
        info: LegInfo,
        ref: str,
        rtp: RtpProtocol,
        port: int,
        control: CallControl,
        clock: Callable[[], float] | None = None,
        *,
        rtp_timeout_s: float = 30.0,
        learn_packets: int = LEARN_PACKETS,
        learn_window_s: float = LEARN_WINDOW_S,
        pacer: Pacer | None = None,
        hearing: bool = True,
    ) -> None:
        self.info = info
        self.ref = ref
        self.port = port
        self._rtp = rtp
        rtp.leg = self
        self._control = control
        self._clock = clock or asyncio.get_running_loop().time
        self._events: deque[LegEvent] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._ended: LegEnded | None = None
        self._closed = False
        self.media: Negotiated | None = None
        self.inbound: RtpInbound | None = None
        self.sender: RtpSender | None = None
        self.out: OutboundStream | None = None
        self._pacer = pacer  # None: agent audio only, no stream between talkspurts
        self._hearing = hearing  # False during early media: the caller's RTP is not taken
        self._decoder: Decoder | None = None
        self._splitter = FrameSplitter()
        self._first_audio = True
        self.learn_packets = learn_packets
        self.learn_window_s = learn_window_s
        self.sources: SourceLearner[Held] | None = None  # from the first media description
        self._foreign_warned_at: float | None = None
        self._foreign_unreported = 0
        self.frames_in = 0
        self.frames_dropped = 0
        self.rtp_timeout_s = rtp_timeout_s
        self.rtcp = RtcpSession(f"edge@{ref}")
        self._rtcp_socket: RtcpProtocol | None = None
        self._last_rtp = self._clock()
        self._loop = asyncio.get_running_loop()
        self._drain_timer: asyncio.TimerHandle | None = None
        self._exported = (0, 0, 0)  # received, lost, late already counted in the metrics
        self._media_task = self._loop.create_task(self._media_timer())

    # -- media description ---------------------------------------------------------

    def set_media(self, media: Negotiated) -> None:
        """The negotiated codec and the peer's address (from the offer, or a new offer)."""
        codec_changed = self.media is None or media.payload_type != self.media.payload_type
        if _rtp_expected(self.media) != _rtp_expected(media):
            self._last_rtp = self._clock()  # the inactivity count restarts on hold and resume
        self.media = media
        self._sources_for(media)
        if not codec_changed:
            return
        self._export()  # a new codec is a new stream: its counters start at 0
        self._exported = (0, 0, 0)
        self._decoder, encoder = codec_pair(media.codec.name)
        self._first_audio = True  # sizes the decoder to the caller's packets
        self.inbound = RtpInbound(
            media.payload_type,
            media.event_payload_type,
            clock_rate=media.codec.clock_rate,
            sources=self.sources,
        )
        pacer = self._pacer
        self.sender = RtpSender(
            media.payload_type, media.codec.clock_rate, continuous=pacer is not None
        )
        self.out = OutboundStream(media.codec.name, encoder, self.sender)
        if pacer is not None and self._ended is None:
            pacer.subscribe(self, self._fill, after_playout=True)

    def _sources_for(self, media: Negotiated) -> None:
        """The source rule for ``media``: a new one at answer, a new window if media moved."""
        rtp = (media.remote_address, media.remote_port)
        now = self._clock()
        sources = self.sources
        if sources is None:
            self.sources = SourceLearner(
                rtp,
                now,
                rtcp=media.rtcp,
                learn_packets=self.learn_packets,
                window_s=self.learn_window_s,
            )
            return
        if not sources.moves(rtp, media.rtcp):
            return  # same place (a refresh, hold or resume in place): the peer stays
        sources.relearn(rtp, media.rtcp, now)
        log.info(
            "SIP media moved: learning its RTP source again",
            extra={"sip_call": self.ref, "rtp_sdp": _text(sources.signalled)},
        )

    # -- caller → edge ---------------------------------------------------------------

    def hear(self) -> None:
        """The call is answered: take the caller's RTP from now (the agent starts now)."""
        if not self._hearing:
            self._hearing = True
            self._last_rtp = self._clock()

    def on_rtp(self, data: bytes, source: Address) -> None:
        inbound = self.inbound
        if inbound is None or self._ended is not None or not self._hearing:
            return
        if len(data) > 1 and SR <= data[1] <= RR:  # RTCP multiplexed on the RTP port
            self.on_rtcp(data, source)
            return
        now = self._clock()
        if source == inbound.sources.peer:
            self._last_rtp = now
            self._deliver(inbound.receive(data, source, now))
        else:
            self._from_elsewhere(inbound, data, source, now)
        if inbound.holding and self._drain_timer is None:
            self._drain_timer = self._loop.call_later(DRAIN_AFTER_S, self._drain)

    def _from_elsewhere(
        self, inbound: RtpInbound, data: bytes, source: Address, now: float
    ) -> None:
        """A packet from other than the peer: held, the peer's first, or dropped as foreign."""
        strangers = inbound.stats.strangers
        self._deliver(inbound.receive(data, source, now))
        sources = inbound.sources
        locked = source == sources.peer
        if inbound.stats.strangers > strangers:  # this packet, or those held for others
            dropped = inbound.stats.strangers - strangers
            self._foreign("rtp", sources.last_foreign, now, dropped)
        if locked:
            self._last_rtp = now
            natted = source != sources.signalled
            log.log(
                logging.INFO if natted else logging.DEBUG,
                "SIP RTP source %s",
                "learned (NAT)" if natted else "from the SDP",
                extra={
                    "sip_call": self.ref,
                    "rtp_source": _text(source),
                    "rtp_sdp": _text(sources.signalled),
                },
            )

    def _foreign(self, protocol: str, source: Address | None, now: float, count: int = 1) -> None:
        """Count packets dropped as foreign; warn, sampled, naming the call."""
        _FOREIGN[protocol].inc(count)
        self._foreign_unreported += count
        last = self._foreign_warned_at
        if last is not None and now - last < FOREIGN_WARN_EVERY_S:
            return
        self._foreign_warned_at = now
        peer = self.sources.peer if self.sources is not None else None
        log.warning(
            "SIP call %s: %s from a stranger (%s) dropped, %d since the last warning",
            self.ref,
            protocol.upper(),
            _text(source),
            self._foreign_unreported,
            extra={
                "sip_call": self.ref,
                "sip_call_id": self.info.provider_call_id,
                "foreign_source": _text(source),
                "rtp_source": _text(peer),
                "dropped": self._foreign_unreported,
            },
        )
        self._foreign_unreported = 0

    def _deliver(self, events: list[InboundEvent]) -> None:
        decoder = self._decoder
        if decoder is None:
            return
        splitter = self._splitter
        for event in events:
            if isinstance(event, Audio):
                if self._first_audio:
                    self._first_audio = False
                    if len(event.payload) != 160 and self.media is not None:
                        decoder = self._decoder = codec_pair(
                            self.media.codec.name, len(event.payload)
                        )[0]
                pcm = decoder.decode(event.payload)
                if event.silence_samples:
                    # RTP clock units (8 kHz for G.711 and G.722 alike) → 16 kHz PCM16
                    pcm = bytes(event.silence_samples * 4) + pcm
                if len(pcm) == FRAME_BYTES and not splitter.pending:
                    self.frames_in += 1  # a 20 ms packet: already one frame
                    self._put(pcm)
                    continue
                for frame in splitter.push(pcm):
                    self.frames_in += 1
                    self._put(frame)
            else:
                self._put(Dtmf(event.digit))

    def _drain(self) -> None:
        """Packets held behind a gap when the caller's RTP pauses: let them go."""
        self._drain_timer = None
        inbound = self.inbound
        if inbound is None or not inbound.holding or self._ended is not None:
            return
        idle = self._clock() - self._last_rtp
        if idle < DRAIN_AFTER_S:
            self._drain_timer = self._loop.call_later(DRAIN_AFTER_S - idle, self._drain)
        else:
            self._deliver(inbound.drain())

    def dtmf(self, digit: str) -> None:
        """A key from SIP INFO (RFC 4733 keys come through :meth:`on_rtp`)."""
        if self._ended is None:
            self._put(Dtmf(digit))

    def _put(self, event: LegEvent) -> None:
        if len(self._events) >= MAX_QUEUED_EVENTS:
            self._events.popleft()
            self.frames_dropped += 1
            _DROPPED.inc()
        self._events.append(event)
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def recv(self) -> LegEvent:
        while True:
            if self._events:
                return self._events.popleft()
            if self._ended is not None:
                return self._ended
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    def ended(
        self, status: str = "BYE", error: str | None = None, *, timeout: bool = False
    ) -> None:
        """The SIP call is over (BYE from the caller, no ACK, no RTP …); recv() ends after
        the queue."""
        if self._ended is None:
            self._ended = LegEnded(status, error, timeout)
            if self._pacer is not None:
                self._pacer.unsubscribe(self)  # no RTP after the end
            self._wake()

    # -- RTCP and inactivity ---------------------------------------------------------

    async def _open_rtcp(self) -> None:
        transport = self._rtp.transport
        if transport is None:
            return
        host = transport.get_extra_info("sockname")[0]
        try:
            _, self._rtcp_socket = await asyncio.get_running_loop().create_datagram_endpoint(
                RtcpProtocol, local_addr=(host, self.port + 1)
            )
        except OSError as exc:
            log.warning("RTCP port unavailable", extra={"sip_call": self.ref, "error": str(exc)})
            return
        self._rtcp_socket.leg = self

    def on_rtcp(self, data: bytes, source: Address) -> None:
        """A compound RTCP packet from the RTCP port, or muxed on the RTP port."""
        sources, inbound = self.sources, self.inbound
        if sources is None:
            return
        rtp_ssrc = inbound.ssrc if inbound is not None else None
        if not sources.rtcp_accepts(source, sender_ssrc(data), rtp_ssrc):
            _RTCP_STRANGER.inc()
            self._foreign("rtcp", source, self._clock())
            return
        sender, rtcp = self.sender, self.rtcp
        samples = rtcp.rtt_samples
        if not rtcp.receive(data, time.time(), sender.ssrc if sender else None):
            _RTCP_MALFORMED.inc()
            log.debug("malformed RTCP dropped", extra={"sip_call": self.ref})
            return
        _RTCP_RECEIVED.inc()
        if rtcp.rtt is not None and rtcp.rtt_samples > samples:
            metrics.SIP_RTCP_RTT_SECONDS.observe(rtcp.rtt)

    def _rtcp_packet(self) -> bytes | None:
        sender, inbound = self.sender, self.inbound
        if sender is None or inbound is None:
            return None
        source = (inbound.ssrc, inbound.reception) if inbound.ssrc is not None else None
        sent = (sender.sent, sender.octets, sender.rtp_time(self._clock()))
        return self.rtcp.report(time.time(), sender.ssrc, sent, source)

    def _send_rtcp(self, packet: bytes) -> None:
        socket = self._rtcp_socket
        if socket is None or socket.transport is None:
            return
        dest = self.sources.rtcp_destination if self.sources is not None else None
        if dest is None:
            return
        if send_datagram(socket.transport, packet, dest, "rtcp"):
            _RTCP_SENT.inc()

    async def _media_timer(self) -> None:
        """Reports every RTCP interval; the end of a call whose RTP stopped."""
        await self._open_rtcp()
        clock = self._clock
        next_report = clock() + report_interval(True, _RNG)
        while self._ended is None:
            deadline = self._last_rtp + self.rtp_timeout_s
            await asyncio.sleep(max(0.0, min(next_report, deadline) - clock()))
            now = clock()
            if now >= next_report:
                next_report = now + report_interval(False, _RNG)
                try:
                    packet = self._rtcp_packet()
                    if packet is not None:  # on hold too (RFC 3264 §5.1)
                        self._send_rtcp(packet)
                    self._export()
                except Exception:  # a report lost, never the inactivity watch
                    log.exception("RTCP report failed", extra={"sip_call": self.ref})
            if not _rtp_expected(self.media):
                self._last_rtp = now  # on hold, or the caller only listens
            elif now - self._last_rtp >= self.rtp_timeout_s and self._ended is None:
                log.info(
                    "SIP call ended: no RTP",
                    extra={"sip_call": self.ref, "rtp_timeout_s": self.rtp_timeout_s},
                )
                self.ended("rtp-timeout", f"no RTP for {self.rtp_timeout_s:g}s", timeout=True)

    def _export(self) -> None:
        """Add what changed since the last call to the Prometheus counters."""
        inbound = self.inbound
        if inbound is None:
            return
        reception = inbound.reception
        counts = (reception.packets_received, reception.packets_lost, inbound.stats.late)
        children = (_RECEIVED, _LOST, _LATE)
        for child, value, before in zip(children, counts, self._exported, strict=True):
            if value > before:
                child.inc(value - before)
        self._exported = counts
        if reception.packets_received:
            metrics.SIP_RTP_JITTER_SECONDS.observe(reception.jitter_ms / 1000)

    async def media_stats(self) -> dict[str, Any]:
        """``voip.media``: what the edge saw of the caller's RTP and sent back."""
        inbound, sender = self.inbound, self.sender
        if inbound is None or sender is None or self.media is None:
            return {}
        reception = inbound.reception
        received, lost = reception.packets_received, reception.packets_lost
        stats: dict[str, Any] = {
            "codec": self.media.codec.name,
            "packets_received": received,
            "packets_lost": lost,
            "fraction_lost": round(lost / (received + lost), 4) if received + lost else 0.0,
            "jitter_ms": round(reception.jitter_ms, 2),
            "late_packets": inbound.stats.late,
            "packets_sent": sender.sent,
            "silence_packets_sent": self.out.silence_sent if self.out is not None else 0,
        }
        if self.rtcp.rtt is not None:
            stats["rtt_ms"] = round(self.rtcp.rtt * 1000, 2)
        return stats

    # -- edge → caller ---------------------------------------------------------------

    def send_frame(self, frame: bytes, talkspurt_start: bool) -> None:
        out, transport = self.out, self._rtp.transport
        if out is None or transport is None:
            return
        dest = self._destination()
        if dest is None:
            out.skip(self._clock())  # on hold: the timestamp runs on
            return
        if _backlog(transport) > SEND_BUFFER_LIMIT:
            _DROPPED.inc()
            out.skip(self._clock())
            return
        send_datagram(transport, out.audio(frame, talkspurt_start, self._clock()), dest, "rtp")

    def _fill(self) -> None:
        """The pacer's tick, after playout: encoded silence in a slot the agent left empty."""
        out, transport = self.out, self._rtp.transport
        if out is None or transport is None:
            return
        dest = self._destination()
        sending = dest is not None and _backlog(transport) <= SEND_BUFFER_LIMIT
        packet = out.fill(self._clock(), sending)
        if packet is not None and dest is not None:
            send_datagram(transport, packet, dest, "rtp")

    def _destination(self) -> Address | None:
        """Where our RTP goes now: None on hold (RFC 3264: RTCP only), once ended, or while
        there is nowhere to send."""
        media, sources = self.media, self.sources
        if media is None or media.on_hold or self._ended is not None or sources is None:
            return None
        return sources.destination

    def clear(self) -> None:
        """Nothing to flush: every frame left at once, the pacer holds the rest."""

    # -- call control -------------------------------------------------------------------

    async def hangup(self) -> None:
        self._control.hangup(self.ref)
        self.ended("hangup")

    async def transfer(self, destination: str) -> None:
        """Blind transfer by REFER to the trunk (RFC 3515). Returns once the trunk reports
        the target answered (the edge has sent BYE: the call machine ends the call as
        transferred); raises ProviderError when the trunk refused or the target failed."""
        await self._control.transfer(self.ref, destination)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.ended("closed")
        self._control.hangup(self.ref)  # still up after a failure: the caller is released
        self._media_task.cancel()
        if self._pacer is not None:
            self._pacer.unsubscribe(self)
        if self._drain_timer is not None:
            self._drain_timer.cancel()
        await asyncio.gather(self._media_task, return_exceptions=True)
        packet = self._rtcp_packet()
        if packet is not None and self.sender is not None:
            self._send_rtcp(packet + build_bye(self.sender.ssrc))
        self._export()
        inbound = self.inbound
        if inbound is not None:
            reception = inbound.reception
            total = reception.packets_received + reception.packets_lost
            if total:
                metrics.SIP_RTP_LOSS_RATIO.observe(reception.packets_lost / total)
        for socket in (self._rtp, self._rtcp_socket):
            if socket is not None:
                if socket.transport is not None:
                    socket.transport.close()
                socket.leg = None
        self._control.release(self.ref)
        if self.inbound is not None:
            log.info(
                "SIP media closed",
                extra={
                    "sip_call": self.ref,
                    "rtp_source": _text(self.inbound.source),
                    "frames_in": self.frames_in,
                    "rtp_sent": self.sender.sent if self.sender else 0,
                    "rtp_jitter_ms": round(self.inbound.reception.jitter_ms, 2),
                    "rtp_cumulative_lost": self.inbound.reception.packets_lost,
                    **{f"rtp_{k}": v for k, v in vars_of(self.inbound.stats).items()},
                },
            )


def _rtp_expected(media: Negotiated | None) -> bool:
    """Whether the caller should be sending RTP: not while it holds the call
    (``sendonly``/``inactive`` from it) nor when it only listens (``recvonly``)."""
    return media is None or media.direction == "sendrecv"


def _text(address: Address | None) -> str:
    """``host:port`` for a log line (``[v6]:port``), or ``-``."""
    if address is None:
        return "-"
    host = f"[{address[0]}]" if ":" in address[0] else address[0]
    return f"{host}:{address[1]}"


def vars_of(stats: object) -> dict[str, int]:
    """The counters of a slotted stats dataclass, for a log line."""
    return {name: getattr(stats, name) for name in getattr(stats, "__slots__", ())}


def _backlog(transport: asyncio.DatagramTransport) -> int:
    """Bytes the UDP socket could not send yet (asyncio's transports have it, untyped)."""
    size = getattr(transport, "get_write_buffer_size", None)
    return int(size()) if callable(size) else 0
