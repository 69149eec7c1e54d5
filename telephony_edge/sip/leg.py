"""The SIP call's media leg: RTP and RTCP sockets, G.722 or G.711 both ways, pushed by the pacer.

Theory of operation
-------------------
Caller audio arrives on the leg's own UDP socket
(:class:`~telephony_edge.sip.rtp_socket.RtpProtocol`), bound by
:class:`~telephony_edge.sip.rtp_socket.RtpPorts` on a random even port of the
configured range (the next call's port cannot be guessed from this one's).
Each datagram goes through :class:`~telephony_edge.sip.rtp.RtpInbound`
(source rule, statistics, telephone-events) into the call's playout buffer
(:class:`~telephony_edge.sip.playout.PlayoutBuffer`: a timestamp jitter
buffer whose delay follows the measured jitter, up to ``sip.jitter_max_ms``).
On every tick of the worker's 20 ms pacer the leg pulls one frame from it,
decoded to canonical PCM16 16 kHz (G.722 is 16 kHz already; G.711 is
upsampled), with loss concealed and the caller's silence filled, and queues it
for :meth:`SipLeg.recv`: from the caller's first packet to the end of the
call the agent hears a frame every 20 ms, whether the caller's phone sends
or not. The queue is bounded: a bridge that stops reading loses the oldest
audio, counted, rather than the worker's memory.

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

The agent's keys (:meth:`SipLeg.send_dtmf`) go as RFC 4733 telephone-events
in the stream's slots when the offer had ``telephone-event``
(:mod:`telephony_edge.sip.dtmf_out`: the agent's audio in an event's slots is
not sent), else as SIP INFO ``application/dtmf-relay``, one request a key.

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
from telephony_edge.audio.g711 import Law
from telephony_edge.audio.g722 import G722Decoder, G722Encoder
from telephony_edge.audio.transcode import G711Decoder, G711Encoder
from telephony_edge.calls.dtmf import DtmfRequest, schedule, total_ms
from telephony_edge.calls.leg import (
    Capabilities,
    Dtmf,
    Leg,
    LegEnded,
    LegEvent,
    LegInfo,
    NotSupported,
)
from telephony_edge.calls.pacing import Pacer
from telephony_edge.sip.dtmf_out import KeyPresses
from telephony_edge.sip.leg_stats import MediaCounters, media_report, vars_of
from telephony_edge.sip.playout import Decoder
from telephony_edge.sip.rtcp import (
    MAX_RTCP_SIZE,
    RR,
    SR,
    RtcpSession,
    build_bye,
    report_interval,
    sender_ssrc,
)
from telephony_edge.sip.rtp import Address, DtmfDigit, Held, RtpInbound, RtpSender
from telephony_edge.sip.rtp_out import OutboundStream
from telephony_edge.sip.rtp_socket import RtcpProtocol, RtpProtocol
from telephony_edge.sip.rtp_source import (
    LEARN_PACKETS,
    LEARN_WINDOW_S,
    RtcpArrival,
    SourceLearner,
    Verdict,
)
from telephony_edge.sip.sdp import Negotiated
from telephony_edge.sip.sendto import send_datagram
from telephony_edge.sip.srtp import SrtpSession, secure

log = logging.getLogger(__name__)

MAX_QUEUED_EVENTS = 250  # 5 s of caller audio
SEND_BUFFER_LIMIT = 64 * 1024
_DROPPED = metrics.FRAMES_DROPPED.labels(reason="sip_backlog")
_KEYED_OVER = metrics.FRAMES_DROPPED.labels(reason="sip_dtmf_out")  # a key took the slot
DTMF_SLACK_S = 2.0  # how much longer than planned a request may take (a late pacer)
_RTCP_SENT = metrics.SIP_RTCP_PACKETS.labels(outcome="sent")
_RTCP_RECEIVED = metrics.SIP_RTCP_PACKETS.labels(outcome="received")
_RTCP_MALFORMED = metrics.SIP_RTCP_PACKETS.labels(outcome="malformed")
_RTCP_STRANGER = metrics.SIP_RTCP_PACKETS.labels(outcome="stranger")
_FOREIGN = {p: metrics.RTP_FOREIGN_PACKETS.labels(protocol=p) for p in ("rtp", "rtcp")}
FOREIGN_WARN_EVERY_S = 10.0  # one warning per call per this long, with the count since
_RNG = random.Random()
LAWS = {"PCMU": Law.ULAW, "PCMA": Law.ALAW}


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

    def info(self, ref: str, content_type: str, body: bytes) -> bool:
        """Send INFO in the call's dialog; False when its dialog is not up."""

    def dialog_state(self, ref: str) -> dict[str, Any]:
        """The call's dialog and media for its live state (sip/dialog_state.py); {} if none."""

    async def hand_off(self, ref: str) -> None:
        """The call goes on on another worker: forget its dialog without a BYE."""


class SipLeg(Leg):
    """One SIP call's RTP media; see the module docstring."""

    capabilities = Capabilities(
        clear=True, dtmf_out=True, transfer_to_number=True, transfer_to_sip=True
    )
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
        pacer: Pacer,
        hearing: bool = True,
        jitter_max_ms: int = 200,
        resumable: bool = False,
    ) -> None:
        self.info = info
        self.resumable = resumable  # sip.dialog_proxy: another worker can take the dialog
        self._handed_off = False
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
        self.srtp: SrtpSession | None = None  # SDES-keyed SRTP (sip/srtp.py), from set_media
        self.inbound: RtpInbound | None = None
        self.sender: RtpSender | None = None
        self.out: OutboundStream | None = None
        self._presses: KeyPresses | None = None  # the agent's keys being sent, slot by slot
        self._presses_sent: asyncio.Future[None] | None = None
        self._pacer = pacer
        self._hearing = hearing  # False during early media: the caller's RTP is not taken
        self.jitter_max_ms = jitter_max_ms
        self.learn_packets = learn_packets
        self.learn_window_s = learn_window_s
        self.sources: SourceLearner[Held] | None = None  # from the first media description
        self._foreign_warned_at: float | None = None
        self._foreign_unreported = 0
        self._rtcp_foreign_reported = 0  # the source rule's RTCP counted foreign so far
        self.frames_in = 0
        self.frames_dropped = 0
        self.rtp_timeout_s = rtp_timeout_s
        self.rtcp = RtcpSession(f"edge@{ref}")
        self._rtcp_socket: RtcpProtocol | None = None
        self._last_rtp = self._clock()
        self._loop = asyncio.get_running_loop()
        self._counters = MediaCounters()  # what the Prometheus counters have of this call
        self._media_task = self._loop.create_task(self._media_timer())

    # -- media description ---------------------------------------------------------

    def set_media(self, media: Negotiated) -> None:
        """The negotiated codec and the peer's address (from the offer, or a new offer)."""
        codec_changed = self.media is None or media.payload_type != self.media.payload_type
        if _rtp_expected(self.media) != _rtp_expected(media):
            self._last_rtp = self._clock()  # the inactivity count restarts on hold and resume
        self.media = media
        self.srtp, fresh = secure(self.srtp, media.srtp)
        if fresh:  # on the sockets before anything is sent: nothing leaves in the clear
            for socket in (self._rtp, self._rtcp_socket):
                if socket is not None:
                    socket.secure(self.srtp)
        self._sources_for(media)
        if not codec_changed:
            if self.inbound is not None:
                self.inbound.cn_pt = media.cn_payload_type
            return
        self._export()  # a new codec is a new stream: its counters start at 0
        self._counters = MediaCounters()
        name = media.codec.name
        self.inbound = RtpInbound(
            media.payload_type,
            media.event_payload_type,
            lambda size: codec_pair(name, size)[0],  # sized to the caller's packets
            clock_rate=media.codec.clock_rate,
            cn_pt=media.cn_payload_type,
            max_delay_ms=self.jitter_max_ms,
            sources=self.sources,
        )
        self.sender = RtpSender(media.payload_type, media.codec.clock_rate, continuous=True)
        self.out = OutboundStream(name, codec_pair(name)[1], self.sender)
        if self._ended is None:
            self._pacer.subscribe(self, self._tick, after_playout=True)

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
            keys = inbound.receive(data, source, now)
            if keys:
                self._keys(keys)
        else:
            self._from_elsewhere(inbound, data, source, now)

    def _from_elsewhere(
        self, inbound: RtpInbound, data: bytes, source: Address, now: float
    ) -> None:
        """A packet from other than the peer: held, the peer's first, or dropped as foreign."""
        strangers = inbound.stats.strangers
        self._keys(inbound.receive(data, source, now))
        sources = inbound.sources
        locked = source == sources.peer
        if inbound.stats.strangers > strangers:  # this packet, or those held for others
            dropped = inbound.stats.strangers - strangers
            self._foreign("rtp", sources.last_foreign, now, dropped)
        if locked:
            self._last_rtp = now
            for arrival in sources.take_held_rtcp(inbound.ssrc):  # the peer's, held till now
                self._read_rtcp(arrival)
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
        self._report_rtcp_foreign(sources, now)  # held RTCP judged, or let go at the window's end

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

    def _keys(self, digits: list[DtmfDigit]) -> None:
        for key in digits:
            self._put(Dtmf(key.digit))

    def _pull(self, now: float) -> None:
        """The pacer's tick: the caller's next frame from the playout buffer, on the clock."""
        inbound = self.inbound
        if inbound is None or not self._hearing:
            return
        playout = inbound.playout
        if self._pacer.skipped:
            playout.skip(self._pacer.skipped)
        frame = playout.pull(now)
        if frame is not None:
            self.frames_in += 1
            sink = self.frame_sink  # straight to the bridge, unless frames wait in the queue
            if sink is None or self._events or not sink(frame):
                self._put(frame)

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
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

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
            self._pacer.unsubscribe(self)  # no RTP after the end
            self._wake()

    # -- RTCP and inactivity ---------------------------------------------------------

    async def _open_rtcp(self) -> None:
        sock, self._rtp.rtcp_sock = self._rtp.rtcp_sock, None  # bound with the RTP port
        if sock is None:
            return
        if self._rtp.transport is None:  # the call closed first
            sock.close()
            return
        _, self._rtcp_socket = await asyncio.get_running_loop().create_datagram_endpoint(
            RtcpProtocol, sock=sock
        )
        self._rtcp_socket.leg = self
        self._rtcp_socket.secure(self.srtp)

    def on_rtcp(self, data: bytes, source: Address) -> None:
        """A compound RTCP packet from the RTCP port, or muxed on the RTP port."""
        sources, inbound = self.sources, self.inbound
        if sources is None:
            return
        if len(data) > MAX_RTCP_SIZE:  # no report is this long: never held, never read
            _RTCP_MALFORMED.inc()
            return
        rtp_ssrc = inbound.ssrc if inbound is not None else None
        now = self._clock()
        arrival = RtcpArrival(source, sender_ssrc(data), data, time.time())
        verdict = sources.rtcp_check(arrival, rtp_ssrc, now)
        self._report_rtcp_foreign(sources, now)
        if verdict is Verdict.ACCEPT:
            self._read_rtcp(arrival)

    def _report_rtcp_foreign(self, sources: SourceLearner[Held], now: float) -> None:
        dropped = sources.stats.rtcp_foreign - self._rtcp_foreign_reported
        if dropped:
            self._rtcp_foreign_reported += dropped
            _RTCP_STRANGER.inc(dropped)
            self._foreign("rtcp", sources.last_rtcp_foreign, now, dropped)

    def _read_rtcp(self, arrival: RtcpArrival) -> None:
        sender, rtcp = self.sender, self.rtcp
        samples = rtcp.rtt_samples
        if not rtcp.receive(arrival.data, arrival.wall, sender.ssrc if sender else None):
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

    async def media_stats(self) -> dict[str, Any]:
        """``voip.media``: what the edge saw of the caller's RTP and sent back."""
        if self.inbound is None or self.sender is None or self.media is None:
            return {}
        return media_report(
            self.media.codec.name, self.inbound, self.sender, self.out, self.rtcp, self.srtp
        )

    def _export(self) -> None:
        if self.inbound is not None:
            self._counters.export(self.inbound)

    # -- edge → caller ---------------------------------------------------------------

    def send_frame(self, frame: bytes, talkspurt_start: bool) -> None:
        out, transport = self.out, self._rtp.transport
        if out is None or transport is None:
            return
        if self._presses is not None and self._presses.sounding:
            _KEYED_OVER.inc()  # this slot carries a key press (see _tick)
            return
        dest = self._destination()
        if dest is None:
            out.skip(self._clock())  # on hold: the timestamp runs on
            return
        if self._rtp.backlog() > SEND_BUFFER_LIMIT:
            _DROPPED.inc()
            out.skip(self._clock())
            return
        send_datagram(transport, out.audio(frame, talkspurt_start, self._clock()), dest, "rtp")

    def _tick(self) -> None:
        """The pacer's tick, after playout: the caller's frame toward the agent, and encoded
        silence toward the caller in a slot the agent left empty."""
        now = self._clock()
        self._pull(now)
        out, transport = self.out, self._rtp.transport
        if out is None or transport is None:
            return
        dest = self._destination()
        sending = dest is not None and self._rtp.backlog() <= SEND_BUFFER_LIMIT
        keys = self._presses
        slot = keys.step() if keys is not None else None
        packet: bytes | None
        if keys is not None and slot is not None and sending:
            start = None if slot.marker else keys.start
            packet, keys.start = out.event(keys.payload_type, slot.payload, slot.marker, start, now)
        else:
            packet = out.fill(now, sending)
        if packet is not None and dest is not None:
            send_datagram(transport, packet, dest, "rtp")
        if keys is not None and keys.done:
            self._presses = None
            if self._presses_sent is not None and not self._presses_sent.done():
                self._presses_sent.set_result(None)

    def _destination(self) -> Address | None:
        """Where our RTP goes now: None on hold (RFC 3264: RTCP only), once ended, or while
        there is nowhere to send."""
        media, sources = self.media, self.sources
        if media is None or media.on_hold or self._ended is not None or sources is None:
            return None
        return sources.destination

    def clear(self) -> None:
        """Nothing to flush: every frame left at once, the pacer holds the rest."""

    async def send_dtmf(self, request: DtmfRequest) -> None:
        """RFC 4733 events in the stream when the offer had ``telephone-event``, else SIP
        INFO; returns once the last key's end (and the gap after it) went out."""
        media = self.media
        if media is None or self.out is None or self._ended is not None:
            raise NotSupported("the call has no media")
        if media.event_payload_type is None:
            await self._send_info(request)
            return
        if media.on_hold:
            raise NotSupported("the caller holds the call: no RTP goes to it")
        if self._presses is not None:
            raise NotSupported("keys are being sent already")
        self._presses_sent = sent = asyncio.get_running_loop().create_future()
        self._presses = KeyPresses(request, media.event_payload_type)
        try:
            await asyncio.wait_for(sent, total_ms(request) / 1000 + DTMF_SLACK_S)
        finally:
            self._presses = self._presses_sent = None

    async def _send_info(self, request: DtmfRequest) -> None:
        """One INFO (``application/dtmf-relay``) a key, at the key's time of the schedule."""
        loop = asyncio.get_running_loop()
        began = loop.time()
        for tone in schedule(request):
            await asyncio.sleep(max(0.0, began + tone.start_ms / 1000 - loop.time()))
            body = f"Signal={tone.key}\r\nDuration={tone.duration_ms}\r\n".encode()
            if not self._control.info(self.ref, "application/dtmf-relay", body):
                raise NotSupported("the call's dialog is not up")
        await asyncio.sleep(max(0.0, began + total_ms(request) / 1000 - loop.time()))

    # -- call control -------------------------------------------------------------------

    async def hangup(self) -> None:
        self._control.hangup(self.ref)
        self.ended("hangup")

    async def transfer(self, destination: str) -> None:
        """Blind transfer by REFER to the trunk (RFC 3515). Returns once the trunk reports
        the target answered (the edge has sent BYE: the call machine ends the call as
        transferred); raises ProviderError when the trunk refused or the target failed."""
        await self._control.transfer(self.ref, destination)

    async def hand_off(self) -> None:
        """Another worker carries the call on (it took it over, or takes it from a drain):
        the dialog is let go without a BYE, and no more RTP leaves here."""
        self._handed_off = True
        self.ended("moved")
        await self._control.hand_off(self.ref)

    def network_state(self) -> dict[str, Any]:
        """The dialog and its media (:class:`~telephony_edge.sip.dialog_state.DialogSnapshot`)."""
        return self._control.dialog_state(self.ref)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.ended("closed")
        if not self._handed_off:  # still up after a failure: the caller is released
            self._control.hangup(self.ref)
        self._media_task.cancel()
        self._pacer.unsubscribe(self)
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
                socket.close()  # the RTP one's RTCP port too, were it never opened
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
