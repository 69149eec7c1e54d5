"""Where a call's RTP and RTCP may come from: strict source learning, sans-I/O.

Theory of operation
-------------------
A call's RTP port is open to the internet, and UDP source addresses are
whatever the sender writes. Latching to the first packet from anywhere (the
"RTP bleed" class, Asterisk AST-2017-005) lets one packet sent before the
caller's first one take the call: the edge then sends the agent's audio to
the stranger and drops the caller's. :class:`SourceLearner` decides, packet
by packet, whose RTP the call takes, the way Asterisk's ``strictrtp=seqno``
and rtpengine's endpoint learning do:

* The address the SDP names (``c=`` and the ``m=`` port of the remote
  description: *signalled*) is trusted at once: its first packet makes it the
  peer. It came through the SIP dialog, which a stranger cannot write.
* Where NAT rewrites that address, the source is *learned*: during the
  learning window (``window_s`` after answer, or after a media change) a
  source becomes the peer once it has sent ``learn_packets`` consecutive
  in-sequence packets of one SSRC. Its packets meanwhile are *held* (the
  caller of :meth:`SourceLearner.check` keeps them in the learner) and given
  back by :meth:`SourceLearner.take_held` when it wins, so a NAT'd caller
  loses no audio, only ``learn_packets - 1`` packets of delay once. A packet
  out of sequence or of another SSRC starts that source's count again. Up to
  ``MAX_CANDIDATES`` sources are on probation at once; a new one evicts the
  one heard from longest ago.
* Once there is a peer, packets from any other address are *foreign*:
  dropped and counted, never learned, whatever they carry. Packets held for
  a source that loses (another became the peer, the window closed, its run
  broke) count as foreign when they are let go. The one exception
  is the signalled address, which replaces a learned peer (it is the
  dialog's word against a guess).
* When the window closes with no peer, only the signalled address is taken.
* :meth:`SourceLearner.relearn` (a re-INVITE or UPDATE that moves media)
  forgets the peer and opens a new window for the new signalled address.

The transitions, by phase and by what the packet's source is to the learner:

    =========  =========  =========  =====================================
    phase      source     → phase    verdict
    =========  =========  =========  =====================================
    LEARNING   signalled  LOCKED     LOCKED (the peer)
    LEARNING   other      LEARNING   HELD, or LOCKED at ``learn_packets``
    LOCKED     peer       LOCKED     ACCEPT
    LOCKED     signalled  LOCKED     LOCKED (replaces a learned peer)
    LOCKED     other      LOCKED     FOREIGN
    CLOSED     signalled  LOCKED     LOCKED
    CLOSED     other      CLOSED     FOREIGN
    =========  =========  =========  =====================================

LEARNING becomes CLOSED when ``now`` passes the window's end.

RTCP follows RTP (:meth:`SourceLearner.rtcp_check`): a compound packet is
taken from the signalled RTCP address (``a=rtcp``, RFC 3605, else the RTP
port + 1) or the signalled RTP address (RFC 5761 mux), and once there is a
peer from the peer's address, its port + 1, or any port of the peer's host
when the packet's sender SSRC is the peer's RTP SSRC (NAT maps RTCP's port
on its own; a stranger does not know the SSRC). A NAT'd peer's first report
often comes before its RTP is learned (baresip sends one as the call starts):
while the window is open with no peer, RTCP from elsewhere is *held* (at most
``MAX_HELD_RTCP``) and judged by the same rule when the peer is learned
(:meth:`SourceLearner.take_held_rtcp`); what the new peer did not send, or what
is still held when the window closes or the media moves, counts as foreign.
RTCP goes back to where the last accepted RTCP came from (symmetric), else to
the signalled RTCP address while the peer is the signalled one, else to the
learned peer's port + 1.

Rules for this module: no sockets, no clock, no logging; time comes in as
``now`` (seconds, any steady clock). The common case, a packet from the peer,
is a tuple comparison in the caller (``source == learner.peer``) that never
calls in here.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from enum import Enum
from typing import Generic, TypeVar

Address = tuple[str, int]
T = TypeVar("T")

LEARN_PACKETS = 4  # Asterisk's probation default
LEARN_WINDOW_S = 10.0
MAX_CANDIDATES = 8
MAX_HELD_RTCP = 4  # a peer reports every few seconds: more than this before its RTP is not it


class Phase(Enum):
    LEARNING = "learning"  # the window is open, no peer yet
    LOCKED = "locked"  # a peer: everything else is foreign
    CLOSED = "closed"  # the window passed without a peer: the signalled address only


class Verdict(Enum):
    ACCEPT = "accept"  # from the peer: use it
    LOCKED = "locked"  # its source is now the peer: use take_held(), then this packet
    HELD = "held"  # a source on probation: kept here until it wins or loses
    FOREIGN = "foreign"  # not from the peer: drop it (counted)


class Kind(Enum):
    """What a packet's source is to the learner."""

    PEER = "peer"
    SIGNALLED = "signalled"
    OTHER = "other"


# (phase, kind) → (next phase, verdict); None: a probation step, decided in code
TRANSITIONS: dict[tuple[Phase, Kind], tuple[Phase, Verdict] | None] = {
    (Phase.LEARNING, Kind.SIGNALLED): (Phase.LOCKED, Verdict.LOCKED),
    (Phase.LEARNING, Kind.OTHER): None,
    (Phase.LOCKED, Kind.PEER): (Phase.LOCKED, Verdict.ACCEPT),
    (Phase.LOCKED, Kind.SIGNALLED): (Phase.LOCKED, Verdict.LOCKED),
    (Phase.LOCKED, Kind.OTHER): (Phase.LOCKED, Verdict.FOREIGN),
    (Phase.CLOSED, Kind.SIGNALLED): (Phase.LOCKED, Verdict.LOCKED),
    (Phase.CLOSED, Kind.OTHER): (Phase.CLOSED, Verdict.FOREIGN),
}


def normalize(address: Address | None) -> Address | None:
    """The address as a socket reports a source (``::ffff:a.b.c.d`` → ``a.b.c.d``), or None
    when nothing can come from it (no address, ``0.0.0.0`` hold, port 0)."""
    if address is None or not address[1]:
        return None
    try:
        ip = ipaddress.ip_address(address[0])
    except ValueError:
        return address
    if ip.is_unspecified:
        return None
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip), address[1]


@dataclass(slots=True)
class Candidate(Generic[T]):
    """A source on probation: its SSRC, last sequence number and run of in-sequence packets."""

    ssrc: int
    seq: int
    seen: float
    held: list[T]

    def follows(self, ssrc: int, seq: int) -> bool:
        return ssrc == self.ssrc and seq == (self.seq + 1) & 0xFFFF


@dataclass(slots=True)
class RtcpArrival:
    """A compound RTCP packet as it came: where from, its first SSRC, its bytes and the wall
    clock of its arrival (a round-trip time is read against that, however long it was held)."""

    source: Address
    sender_ssrc: int | None
    data: bytes
    wall: float


@dataclass(slots=True)
class SourceStats:
    foreign: int = 0  # packets dropped: not from the peer
    learned: int = 0  # peers learned by probation (not the signalled address)
    signalled: int = 0  # peers taken because the SDP named them
    rtcp_foreign: int = 0


class SourceLearner(Generic[T]):
    """One call's RTP source rule; see the module docstring."""

    __slots__ = (
        "_candidates",
        "_held",
        "_held_rtcp",
        "_until",
        "last_foreign",
        "last_rtcp_foreign",
        "learn_packets",
        "peer",
        "phase",
        "rtcp_source",
        "signalled",
        "signalled_rtcp",
        "stats",
        "window_s",
    )

    def __init__(
        self,
        signalled: Address | None,
        now: float,
        *,
        rtcp: Address | None = None,
        learn_packets: int = LEARN_PACKETS,
        window_s: float = LEARN_WINDOW_S,
    ) -> None:
        self.learn_packets = max(1, learn_packets)
        self.window_s = window_s
        self.stats = SourceStats()
        self.signalled: Address | None = None
        self.signalled_rtcp: Address | None = None
        self.phase = Phase.LEARNING
        self.peer: Address | None = None
        self.rtcp_source: Address | None = None  # where the peer's accepted RTCP came from
        self.last_foreign: Address | None = None  # a source of the latest foreign packets
        self.last_rtcp_foreign: Address | None = None  # that of the latest foreign RTCP
        self._until = 0.0
        self._candidates: dict[Address, Candidate[T]] = {}
        self._held: list[T] = []
        self._held_rtcp: list[RtcpArrival] = []
        self.relearn(signalled, rtcp, now)

    def relearn(self, signalled: Address | None, rtcp: Address | None, now: float) -> None:
        """The media moved (or the call was answered): a new signalled address, a new window."""
        self.signalled = normalize(signalled)
        self.signalled_rtcp = normalize(rtcp) or _next_port(self.signalled)
        self.phase = Phase.LEARNING
        self.peer = self.rtcp_source = None
        self._until = now + self.window_s
        self._drop_candidates()
        self._held = []
        self._drop_held_rtcp()

    def moves(self, signalled: Address | None, rtcp: Address | None) -> bool:
        """Whether a new description names other addresses than the current one."""
        rtp = normalize(signalled)
        return (rtp, normalize(rtcp) or _next_port(rtp)) != (self.signalled, self.signalled_rtcp)

    def check(self, source: Address, ssrc: int, seq: int, now: float, item: T) -> Verdict:
        """What to do with a packet from ``source`` (``item`` is kept if it is held)."""
        self._expire(now)
        kind = (
            Kind.PEER
            if source == self.peer
            else Kind.SIGNALLED
            if source == self.signalled
            else Kind.OTHER
        )
        step = TRANSITIONS[self.phase, kind]
        if step is None:
            return self._probation(source, ssrc, seq, now, item)
        self.phase, verdict = step
        if verdict is Verdict.LOCKED:
            self._lock(source, [])
            self.stats.signalled += 1
        elif verdict is Verdict.FOREIGN:
            self.stats.foreign += 1
            self.last_foreign = source
        return verdict

    def _expire(self, now: float) -> None:
        if self.phase is Phase.LEARNING and now >= self._until:
            self.phase = Phase.CLOSED
            self._drop_candidates()
            self._drop_held_rtcp()

    def _probation(self, source: Address, ssrc: int, seq: int, now: float, item: T) -> Verdict:
        candidate = self._candidates.get(source)
        if candidate is not None and candidate.follows(ssrc, seq):
            candidate.seq, candidate.seen = seq, now
            if len(candidate.held) + 1 >= self.learn_packets:
                self.phase = Phase.LOCKED
                self._lock(source, candidate.held)
                self.stats.learned += 1
                return Verdict.LOCKED
            candidate.held.append(item)
            return Verdict.HELD
        if candidate is not None:
            self.stats.foreign += len(candidate.held)  # its run broke: they go
            self.last_foreign = source
        elif len(self._candidates) >= MAX_CANDIDATES:
            stale = min(self._candidates, key=lambda a: self._candidates[a].seen)
            self.stats.foreign += len(self._candidates.pop(stale).held)
            self.last_foreign = stale
        if self.learn_packets == 1:
            self.phase = Phase.LOCKED
            self._lock(source, [])
            self.stats.learned += 1
            return Verdict.LOCKED
        self._candidates[source] = Candidate(ssrc, seq, now, [item])
        return Verdict.HELD

    def _lock(self, source: Address, held: list[T]) -> None:
        if source != self.peer:
            self.rtcp_source = None
        self.peer = source
        self._held = held
        self._candidates.pop(source, None)
        self._drop_candidates()

    def _drop_candidates(self) -> None:
        """Forget the sources on probation; what they sent counts as foreign."""
        for source, candidate in self._candidates.items():
            self.stats.foreign += len(candidate.held)
            self.last_foreign = source
        self._candidates.clear()

    def take_held(self) -> list[T]:
        """The new peer's packets held on probation, in arrival order (once)."""
        held, self._held = self._held, []
        return held

    # -- RTCP ------------------------------------------------------------------------

    def rtcp_check(self, arrival: RtcpArrival, rtp_ssrc: int | None, now: float) -> Verdict:
        """ACCEPT a compound RTCP packet as the peer's (the peer's RTP SSRC being
        ``rtp_ssrc``; where it came from is remembered), HOLD it while a peer is still to be
        learned (:meth:`take_held_rtcp` judges it then), or call it FOREIGN (counted)."""
        self._expire(now)
        if self._rtcp_from_peer(arrival.source, arrival.sender_ssrc, rtp_ssrc):
            self.rtcp_source = arrival.source
            return Verdict.ACCEPT
        if self.phase is not Phase.LEARNING:
            self._rtcp_foreign(arrival.source)
            return Verdict.FOREIGN
        held = self._held_rtcp
        if len(held) >= MAX_HELD_RTCP:
            self._rtcp_foreign(held.pop(0).source)
        held.append(arrival)
        return Verdict.HELD

    def take_held_rtcp(self, rtp_ssrc: int | None) -> list[RtcpArrival]:
        """The RTCP held before the peer was learned that the peer sent, in arrival order
        (once); the rest counts as foreign."""
        held, self._held_rtcp = self._held_rtcp, []
        taken = []
        for arrival in held:
            if self.peer is not None and self._rtcp_from_peer(
                arrival.source, arrival.sender_ssrc, rtp_ssrc
            ):
                self.rtcp_source = arrival.source
                taken.append(arrival)
            else:
                self._rtcp_foreign(arrival.source)
        return taken

    def _rtcp_from_peer(
        self, source: Address, sender_ssrc: int | None, rtp_ssrc: int | None
    ) -> bool:
        if source == self.signalled_rtcp or source == self.signalled:
            return True
        peer = self.peer
        return peer is not None and (
            source == peer
            or source == (peer[0], peer[1] + 1)
            or (source[0] == peer[0] and sender_ssrc is not None and sender_ssrc == rtp_ssrc)
        )

    def _rtcp_foreign(self, source: Address) -> None:
        self.stats.rtcp_foreign += 1
        self.last_rtcp_foreign = source

    def _drop_held_rtcp(self) -> None:
        for arrival in self._held_rtcp:
            self._rtcp_foreign(arrival.source)
        self._held_rtcp = []

    @property
    def rtcp_destination(self) -> Address | None:
        """Where our RTCP goes; see the module docstring."""
        if self.rtcp_source is not None:
            return self.rtcp_source
        if self.peer is None or self.peer == self.signalled:
            return self.signalled_rtcp
        return _next_port(self.peer)

    @property
    def destination(self) -> Address | None:
        """Where our RTP goes: the peer, or the signalled address until there is one."""
        return self.peer or self.signalled


def _next_port(address: Address | None) -> Address | None:
    return (address[0], address[1] + 1) if address is not None else None
