"""The SIP call's media leg: one RTP socket, G.722 or G.711 both ways, pushed by the pacer.

Theory of operation
-------------------
Caller audio arrives on the leg's own UDP socket (:class:`RtpProtocol`);
each datagram goes through :class:`~telephony_edge.sip.rtp.RtpInbound`
(latch, reorder, conceal, telephone-events), is decoded to canonical PCM16
16 kHz (G.722 is 16 kHz already; G.711 is upsampled) and cut into 20 ms
frames (peers send 20 or 30 ms packets), and queued for :meth:`SipLeg.recv`.
The queue is bounded: a bridge that stops reading loses the oldest audio,
counted, rather than the worker's memory.

Agent audio leaves in :meth:`SipLeg.send_frame`, called by the worker's pacer
every 20 ms while the agent speaks: encode, number (:class:`RtpSender`), and
``sendto`` at once to the latched source of the caller's RTP (symmetric RTP),
or to the SDP's address until the caller has sent anything. Nothing is
buffered here, so ``playout_lead_frames`` is 0 and :meth:`clear` has nothing
to flush.

Call control goes through the SIP side (:class:`CallControl`): the edge's
hang-up sends BYE; a BYE from the caller ends the leg (:meth:`SipLeg.ended`).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import Protocol, cast

from telephony_edge import metrics
from telephony_edge.audio.frames import FrameSplitter
from telephony_edge.audio.g711 import Law
from telephony_edge.audio.g722 import G722Decoder, G722Encoder
from telephony_edge.audio.transcode import G711Decoder, G711Encoder
from telephony_edge.calls.leg import Capabilities, Dtmf, Leg, LegEnded, LegEvent, LegInfo
from telephony_edge.sip.rtp import Address, Audio, RtpInbound, RtpSender
from telephony_edge.sip.sdp import Negotiated

log = logging.getLogger(__name__)

MAX_QUEUED_EVENTS = 250  # 5 s of caller audio
SEND_BUFFER_LIMIT = 64 * 1024
SAMPLES_PER_FRAME = 160  # 20 ms of RTP clock (8000 for G.711 and, by RFC 3551, G.722)
_DROPPED = metrics.FRAMES_DROPPED.labels(reason="sip_backlog")
LAWS = {"PCMU": Law.ULAW, "PCMA": Law.ALAW}


class Decoder(Protocol):
    def decode(self, payload: bytes) -> bytes: ...


class Encoder(Protocol):
    def encode(self, frame: bytes) -> bytes: ...


def codec_pair(name: str) -> tuple[Decoder, Encoder]:
    """Stateful per-call decoder and encoder for a negotiated codec name."""
    if name == "G722":
        return G722Decoder(), G722Encoder()
    law = LAWS[name]
    return G711Decoder(law), G711Encoder(law)


class CallControl(Protocol):
    """What the leg asks of the SIP side (the UDP shell)."""

    def hangup(self, ref: str) -> None:
        """Send BYE (or a final answer) for the call ``ref`` if it is still up."""

    def release(self, ref: str) -> None:
        """The leg is closed: forget it (its RTP port is free again)."""

    async def transfer(self, ref: str, destination: str) -> None:
        """REFER the call to ``destination``; return once done, raise if it failed."""


class RtpProtocol(asyncio.DatagramProtocol):
    """The RTP socket: hands every datagram to its leg."""

    def __init__(self) -> None:
        self.leg: SipLeg | None = None
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's UDP transport is not a subclass of asyncio's; it has the same methods
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        if self.leg is not None:
            self.leg.on_rtp(data, (str(addr[0]), int(addr[1])))


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
        self._decoder: Decoder | None = None
        self._encoder: Encoder | None = None
        self._splitter = FrameSplitter()
        self._sdp_dest: Address | None = None
        self.frames_in = 0
        self.frames_dropped = 0

    # -- media description ---------------------------------------------------------

    def set_media(self, media: Negotiated) -> None:
        """The negotiated codec and the peer's address (from the offer, or a new offer)."""
        codec_changed = self.media is None or media.payload_type != self.media.payload_type
        self.media = media
        self._sdp_dest = (media.remote_address, media.remote_port)
        if not codec_changed:
            return
        self._decoder, self._encoder = codec_pair(media.codec.name)
        self.inbound = RtpInbound(media.payload_type, media.event_payload_type)
        self.sender = RtpSender(media.payload_type, media.codec.clock_rate)

    # -- caller → edge ---------------------------------------------------------------

    def on_rtp(self, data: bytes, source: Address) -> None:
        inbound, decoder = self.inbound, self._decoder
        if inbound is None or decoder is None or self._ended is not None:
            return
        for event in inbound.receive(data, source):
            if isinstance(event, Audio):
                pcm = decoder.decode(event.payload)
                if event.silence_samples:
                    # RTP clock units (8 kHz for G.711 and G.722 alike) → 16 kHz PCM16
                    pcm = bytes(event.silence_samples * 4) + pcm
                for frame in self._splitter.push(pcm):
                    self.frames_in += 1
                    self._put(frame)
            else:
                self._put(Dtmf(event.digit))

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

    def ended(self, status: str = "BYE", error: str | None = None) -> None:
        """The SIP call is over (BYE from the caller, no ACK …); recv() ends after the queue."""
        if self._ended is None:
            self._ended = LegEnded(status, error)
            self._wake()

    # -- edge → caller ---------------------------------------------------------------

    def send_frame(self, frame: bytes, talkspurt_start: bool) -> None:
        media, sender, encoder = self.media, self.sender, self._encoder
        transport = self._rtp.transport
        if media is None or sender is None or encoder is None or transport is None:
            return
        if media.on_hold or self._ended is not None:
            return
        dest = (self.inbound.source if self.inbound else None) or self._sdp_dest
        if dest is None or not dest[1]:
            return
        if _backlog(transport) > SEND_BUFFER_LIMIT:
            _DROPPED.inc()
            return
        packet = sender.packet(
            encoder.encode(frame), SAMPLES_PER_FRAME, self._clock(), talkspurt_start
        )
        transport.sendto(packet, dest)

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
        if self._rtp.transport is not None:
            self._rtp.transport.close()
        self._rtp.leg = None
        self._control.release(self.ref)
        if self.inbound is not None:
            log.info(
                "SIP media closed",
                extra={
                    "sip_call": self.ref,
                    "rtp_source": str(self.inbound.source),
                    "frames_in": self.frames_in,
                    "rtp_sent": self.sender.sent if self.sender else 0,
                    **{f"rtp_{k}": v for k, v in vars_of(self.inbound.stats).items()},
                },
            )


def vars_of(stats: object) -> dict[str, int]:
    """The counters of a slotted stats dataclass, for a log line."""
    return {name: getattr(stats, name) for name in getattr(stats, "__slots__", ())}


def _backlog(transport: asyncio.DatagramTransport) -> int:
    """Bytes the UDP socket could not send yet (asyncio's transports have it, untyped)."""
    size = getattr(transport, "get_write_buffer_size", None)
    return int(size()) if callable(size) else 0
