"""The WebRTC leg: an aiortc peer connection as the network side of a call.

Inbound, the caller's Opus packets, as aiortc's receiver releases them from
its jitter buffer, are decoded on the event loop straight to canonical 20 ms
frames (:class:`~telephony_edge.webrtc.opus.OpusToCanonical`): the leg takes
the place of the receiver's decoder queue (:class:`InboundAudio`), so there
is no decoder thread and no hop per packet. Outbound, :class:`AgentTrack` is the
track the sender's loop (:mod:`telephony_edge.webrtc.sender`, in place of
aiortc's) pulls: each ``next_payload()`` waits for the frame's slot on
a fixed 20 ms grid (the loop's monotonic clock, so no drift), takes the
bridge's ``next_frame()`` (silence when None) and returns it as an Opus
payload (:mod:`telephony_edge.webrtc.opus`) with its ``pts`` on
the 48 kHz RTP clock. A late pull (the process was
busy) catches up with the grid by at most five frames; past that, the missed
slots are skipped: ``pts`` jumps over them (the RTP timestamp stays on wall
time, as after a silence) instead of sending a burst or shifting the grid.
The agent's audio is delayed by such a stall, never dropped. Nothing is
buffered between the bridge and the encoder, so ``clear()`` has nothing to
drop.

A data channel the peer opens carries the agent's text to the page
(captions) and its keys (``send_dtmf``), and the page's ``end`` and ``dtmf`` requests
(:mod:`telephony_edge.webrtc.channel`); a malformed message is counted
(``telephony_edge_bad_input_total{source="webrtc-datachannel"}``), logged
(rate-limited per peer, :mod:`telephony_edge.badinput`) with the call id and skipped.

The offer's ICE candidates on addresses the operator does not allow
(:mod:`telephony_edge.webrtc.candidates`: private, loopback, metadata …) are
dropped before aiortc sees them and counted
(``telephony_edge_bad_input_total{source="webrtc"}``); :func:`~telephony_edge.webrtc.ice.guard`
judges what aioice learns later (checks from unknown sources) the same way.

A new call's agent session starts only once ICE and DTLS are connected
(:meth:`WebRtcLeg.wait_connected`, awaited by the provider before the call
is bridged): an answered offer that never connects ends ``error`` without
ever reaching the agent core. A resumed call is bridged at once (its agent's
audio waits in the playout until the track is pulled).

A call whose answer carried a resume token (``resumable``) is brought back
by its caller, to any worker, if this one is lost
(:mod:`telephony_edge.webrtc.resume`). So the page can tell a lost worker
from a normal end, the edge says ``{"type": "hangup"}`` on the data channel
before it closes a call it ends, and ``{"type": "move"}`` when it hands the
call off (a drain): then the page re-offers at once.

The call ends ``user-ended`` when the peer goes (its track ends, the
connection closes, the page sends ``end``, or it stops answering ICE consent
checks for ``webrtc.consent_timeout_s``: a killed browser, see
:mod:`telephony_edge.webrtc.consent`) and ``error`` when ICE/DTLS fails or
does not connect within ``webrtc.connect_timeout_s``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fractions
import logging
from collections.abc import Coroutine
from typing import Any, ClassVar

from aiortc import (
    RTCDataChannel,
    RTCPeerConnection,
    RTCRtpReceiver,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.jitterbuffer import JitterFrame
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.sdp import SessionDescription
from av.packet import Packet

from telephony_edge import badinput, metrics
from telephony_edge.calls.dtmf import DtmfRequest, schedule, total_ms
from telephony_edge.calls.leg import (
    Capabilities,
    Clock,
    FrameSource,
    Leg,
    LegEnded,
    LegEvent,
    LegInfo,
    NotSupported,
)
from telephony_edge.webrtc import channel, consent, sender
from telephony_edge.webrtc.candidates import filter_offer, printable, summary
from telephony_edge.webrtc.ice import configuration, connections, gather_on, guard
from telephony_edge.webrtc.opus import OpusPacketizer, OpusToCanonical, Undecodable
from telephony_edge.webrtc.ports import NoMediaPort
from telephony_edge.webrtc.settings import WebRtcSettings
from telephony_edge.webrtc.stats import media_report

log = logging.getLogger(__name__)

RATE = 48_000
SAMPLES = RATE // 50  # 20 ms
TIME_BASE = fractions.Fraction(1, RATE)
MAX_LATE_FRAMES = 5
BAD_INPUT = "webrtc-datachannel"  # the bad-input source of the page's messages
BAD_CANDIDATE = "webrtc"  # the bad-input source of refused ICE candidate addresses
NOTICE_FLUSH_STEPS = 50  # 10 ms each: how long a closing call waits for its last notice
_DECODER_QUEUE = "_RTCRtpReceiver__decoder_queue"  # aiortc's receiver hands packets to this


class OfferRefused(Exception):
    """The offer cannot be answered (400 with the reason)."""


class AgentTrack(MediaStreamTrack):
    """The outbound track: agent audio pulled from the bridge every 20 ms, as Opus payloads."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self.source: FrameSource | None = None
        self.opus = OpusPacketizer()
        self._pts = 0
        self._grid: float | None = None
        self._slot = 0  # the next frame's place on the grid
        self.frames = 0
        self.skipped = 0  # slots skipped after stalls

    async def next_payload(self) -> tuple[bytes, int]:
        """The next slot's Opus payload and its ``pts``, once the slot has come."""
        if self.readyState != "live":
            raise MediaStreamError
        loop = asyncio.get_running_loop()
        if self._grid is None:
            self._grid = loop.time()
        else:
            late = loop.time() - (self._grid + self._slot * 0.02)
            if late < 0:
                await asyncio.sleep(-late)
            elif late > MAX_LATE_FRAMES * 0.02:  # a stall: skip the missed slots, no burst
                missed = int(late / 0.02)
                self._slot += missed
                self._pts += missed * SAMPLES
                self.skipped += missed
        self._slot += 1
        self.frames += 1
        pts = self._pts
        self._pts += SAMPLES
        return self.opus.payload(self.source.next_frame() if self.source is not None else None), pts

    async def recv(self) -> Packet[Any]:
        """The track as aiortc's own sender would pull it (the leg's sender uses
        :meth:`next_payload`)."""
        payload, pts = await self.next_payload()
        packet = Packet(payload)
        packet.pts = pts
        packet.time_base = TIME_BASE
        return packet


class InboundAudio:
    """Takes the place of an aiortc receiver's decoder queue: each packet the jitter buffer
    releases is decoded here, on the loop, into the leg's canonical frames.

    aiortc still starts its decoder thread, which finds nothing to get and exits at
    once; the receiver's ``put(None)`` (an RTCP BYE, a disconnect, the close) ends the
    leg as the old remote track's end did.
    """

    def __init__(self, leg: WebRtcLeg) -> None:
        self._leg = leg
        self._opus = OpusToCanonical()
        self.undecodable = 0

    @classmethod
    def install(cls, receiver: RTCRtpReceiver, leg: WebRtcLeg) -> InboundAudio:
        """Put one in ``receiver`` before it starts (aiortc >= 1.16's private queue)."""
        if not hasattr(receiver, _DECODER_QUEUE):
            raise RuntimeError(f"aiortc's RTCRtpReceiver has no {_DECODER_QUEUE}: re-check leg.py")
        inbound = cls(leg)
        setattr(receiver, _DECODER_QUEUE, inbound)
        return inbound

    def get(self) -> None:
        """What aiortc's decoder thread gets: nothing to decode there, so it ends."""
        return None

    def put(self, task: tuple[RTCRtpCodecParameters, JitterFrame] | None) -> None:
        leg = self._leg
        if task is None:
            leg._end(LegEnded("completed"))
            return
        codec, encoded = task
        try:
            if codec.name.lower() != "opus":
                raise ValueError(f"unexpected codec {codec.name}")
            frames = self._opus.frames(encoded.data)
        except Undecodable:  # as aiortc's decoder: skip the packet, keep the decoder's state
            self.undecodable += 1
            return
        except Exception as exc:  # never into aiortc's transport, which would stop
            log.exception("WebRTC inbound audio failed", extra={"provider": "webrtc"})
            leg._end(LegEnded("failed", f"inbound audio: {exc}"))
            return
        sink, events = leg.frame_sink, leg._events
        for pcm in frames:  # to the bridge now, unless frames wait in the queue (issue 21)
            leg.frames_in += 1
            if sink is None or not events.empty() or not sink(pcm):
                events.put_nowait(pcm)


class WebRtcLeg(Leg):
    """One peer connection: its remote audio in, :class:`AgentTrack` out."""

    clock = Clock.PULLED
    playout_lead_frames = 0
    capabilities: ClassVar[Capabilities] = Capabilities(clear=True, dtmf_out=True)

    def __init__(self, info: LegInfo, settings: WebRtcSettings) -> None:
        self.info = info
        self.settings = settings
        self.pc = RTCPeerConnection(configuration(settings))
        self.track = AgentTrack()
        self._events: asyncio.Queue[LegEvent] = asyncio.Queue()
        self._ended: LegEnded | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self._inbound: list[InboundAudio] = []
        self._connected = asyncio.Event()
        self._settled = asyncio.Event()  # connected, or ended before it
        self.frames_in = 0
        self.call_id = ""  # set by the provider once the call is recorded
        self.peer: str | None = None  # the address the offer came from, for bad-input lines
        self.channel: RTCDataChannel | None = None
        self._early: collections.deque[str] = collections.deque(maxlen=channel.MAX_EARLY_CAPTIONS)
        self.malformed = 0
        self.refused = 0  # ICE checks from refused addresses (after the offer)
        self.captions_dropped = 0
        self.pc.on("datachannel", self._on_channel)
        self.pc.on("connectionstatechange", self._on_state)

    # -- signalling ---------------------------------------------------------------

    async def answer(self, sdp: str) -> RTCSessionDescription:
        """Take the offer, add the agent's track, gather; the complete answer (no trickle)."""
        transceiver = self.pc.addTransceiver(self.track, direction="sendrecv")
        opus = [
            c
            for c in RTCRtpSender.getCapabilities("audio").codecs
            if c.mimeType.lower() == "audio/opus"
        ]
        transceiver.setCodecPreferences(opus)
        sender.install(transceiver.sender, self.track.next_payload)
        policy = self.settings.peer_policy()
        sdp, refused = filter_offer(sdp, policy)
        if refused:  # before aiortc sees them: no STUN ever goes there
            metrics.BAD_INPUT.labels(source=BAD_CANDIDATE).inc(len(refused))
            badinput.report(BAD_CANDIDATE, summary(refused), self.peer, count=False)
        try:
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        except Exception as exc:  # aiortc raises ValueError, OperationError, … for bad offers
            reason = str(exc) or type(exc).__name__
            if "send parameters" in reason and "audio" in reason:
                reason = "the offer's audio has no Opus codec"
            raise OfferRefused(f"the offer was refused: {reason}") from None
        if transceiver.mid is None:
            raise OfferRefused("the offer has no audio")
        for each in self.pc.getTransceivers():  # receivers start once DTLS is up: not yet
            if each.kind == "audio":
                self._inbound.append(InboundAudio.install(each.receiver, self))
        guard(self.pc, policy, self._refused)  # before any socket: checks from strangers too
        ports = self.settings.port_range()
        gather_on(self.pc, self.settings.advertised_addresses, ports)
        answer = await self.pc.createAnswer()
        await self.pc.setLocalDescription(answer)  # returns once gathering is complete
        if ports is not None and not any(c.local_candidates for c in connections(self.pc)):
            raise NoMediaPort(
                f"no free UDP port in webrtc.media_port_min-max {ports.low}-{ports.high}"
            )
        local = self.pc.localDescription
        self._spawn(self._connect_deadline())
        return local

    def _refused(self, kind: str, address: str) -> None:
        """An address aioice learnt after the offer (a peer-reflexive source) was refused."""
        self.refused += 1
        error = f"ICE check refused: {kind} address"
        badinput.report(BAD_CANDIDATE, error, printable(address), call_id=self.call_id or None)

    # -- the data channel ------------------------------------------------------------

    def _on_channel(self, dc: RTCDataChannel) -> None:
        self.channel = dc  # the latest one the peer opened
        dc.on("message", self._on_message)
        while self._early and dc.readyState == "open":
            dc.send(self._early.popleft())

    def _on_message(self, message: str | bytes) -> None:
        try:
            request = channel.parse(message)
        except channel.Malformed as exc:
            self.malformed += 1
            error = f"data channel message skipped: {badinput.phrase(str(exc))}"
            badinput.report(BAD_INPUT, error, self.peer, call_id=self.call_id or None)
            return
        if isinstance(request, channel.EndRequested):
            log.info("the page ended the call", extra={"call_id": self.call_id})
            self._end(LegEnded("completed"))
        else:
            self._events.put_nowait(request)

    def agent_text(self, role: str, text: str, final: bool) -> None:
        if role not in channel.TYPES:
            return
        message = channel.caption(role, text, final)
        dc = self.channel
        if dc is None:  # the agent spoke before the page's channel opened (its greeting)
            self._early.append(message)
        elif dc.readyState != "open" or dc.bufferedAmount > channel.MAX_BUFFERED_BYTES:
            self.captions_dropped += 1
        else:
            dc.send(message)

    async def send_dtmf(self, request: DtmfRequest) -> None:
        """The agent's keys over the data channel, one message a key at the key's time."""
        loop = asyncio.get_running_loop()
        began = loop.time()
        for tone in schedule(request):
            await asyncio.sleep(max(0.0, began + tone.start_ms / 1000 - loop.time()))
            dc = self.channel
            if dc is None or dc.readyState != "open":
                raise NotSupported("the caller's page has no open data channel")
            dc.send(channel.key(tone.key, tone.duration_ms))
        await asyncio.sleep(max(0.0, began + total_ms(request) / 1000 - loop.time()))

    # -- the connection's life ------------------------------------------------------

    def _on_state(self) -> None:
        state = self.pc.connectionState
        if state == "connected":
            if not self._connected.is_set():
                self._spawn(self._keep_consent())
            self._connected.set()
            self._settled.set()
        elif state == "failed":
            self._end(LegEnded("failed", "the WebRTC connection failed (ICE or DTLS)"))
        elif state == "closed":
            self._end(LegEnded("completed"))

    async def _keep_consent(self) -> None:
        """End the call ``user-ended`` once the peer stops answering consent checks."""
        watches = [
            asyncio.ensure_future(
                consent.watch(c, self.settings.consent_interval_s, self.settings.consent_timeout_s)
            )
            for c in connections(self.pc)
        ]
        if not watches:
            return
        try:
            done, _ = await asyncio.wait(watches, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in watches:
                task.cancel()
        silent = next(iter(done)).result()
        log.info(
            "the WebRTC peer stopped answering consent checks (%.1f s): gone",
            silent,
            extra={"call_id": self.call_id},
        )
        self._end(LegEnded("completed"))

    async def _connect_deadline(self) -> None:
        timeout = self.settings.connect_timeout_s
        try:
            await asyncio.wait_for(self._connected.wait(), timeout)
        except TimeoutError:
            self._end(LegEnded("failed", f"ICE/DTLS did not connect within {timeout:g} s"))

    def _end(self, ended: LegEnded) -> None:
        if self._ended is None:
            self._ended = ended
            self._events.put_nowait(ended)
            self._settled.set()

    @property
    def connected(self) -> bool:
        """Whether ICE and DTLS have connected (it stays true once they have)."""
        return self._connected.is_set()

    async def wait_connected(self) -> str | None:
        """None once ICE and DTLS are connected; else why the peer never got there.

        The provider starts the agent session only after this, so an offer
        that never connects (a scanner, a page closed at once) costs no agent
        time: it ends within ``connect_timeout_s`` (the deadline task) at most.
        """
        await self._settled.wait()
        if self._connected.is_set():
            return None
        ended = self._ended
        return (ended.error if ended else None) or "the peer left before ICE/DTLS connected"

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- Leg -----------------------------------------------------------------------

    async def recv(self) -> LegEvent:
        if self._ended is not None and self._events.empty():
            return self._ended
        return await self._events.get()

    def attach(self, source: FrameSource) -> None:
        self.track.source = source

    def clear(self) -> None:
        """Nothing to drop: the track holds no agent audio beyond the frame being sent."""

    async def media_stats(self) -> dict[str, Any]:
        """RTP loss, jitter and round-trip time (:mod:`telephony_edge.webrtc.stats`)."""
        local = self.pc.localDescription
        if local is None:
            return {}
        codecs = [c for m in SessionDescription.parse(local.sdp).media for c in m.rtp.codecs]
        if not codecs:
            return {}
        return media_report(await self.pc.getStats(), str(codecs[0]), codecs[0].clockRate)

    async def hangup(self) -> None:
        if self._notify("hangup"):  # a normal end: the page must not resume it
            await self._flushed()
        await self.close()

    async def hand_off(self) -> None:
        """Tell the page to re-offer with its resume token (any other worker takes it); a
        caller without a data channel re-offers once the closed connection goes silent."""
        if not self.resumable:
            raise NotSupported("this WebRTC call has no resume token")
        self._end(LegEnded("completed", moved=True))
        if self._notify("move"):
            await self._flushed()
        await self.close()

    async def _flushed(self) -> None:
        """Let the data channel send what it holds before the connection closes (bounded)."""
        dc = self.channel
        for _ in range(NOTICE_FLUSH_STEPS):
            if dc is None or dc.bufferedAmount == 0:
                return
            await asyncio.sleep(0.01)

    def _notify(self, kind: str) -> bool:
        """Send the page a notice on the data channel; whether it could be sent."""
        dc = self.channel
        if dc is None or dc.readyState != "open":
            return False
        dc.send(channel.notice(kind))
        return True

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._end(LegEnded("completed"))
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.track.stop()
        with contextlib.suppress(Exception):
            await self.pc.close()
        log.info(
            "WebRTC media closed",
            extra={
                "call_id": self.call_id,
                "frames_in": self.frames_in,
                "frames_out": self.track.frames,
                "slots_skipped": self.track.skipped,
                "opus_encoded": self.track.opus.encoded,
                "opus_undecodable": sum(i.undecodable for i in self._inbound),
                "malformed": self.malformed,
                "ice_refused": self.refused,
                "captions_dropped": self.captions_dropped,
            },
        )
