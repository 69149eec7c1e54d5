"""The agent's keys as RFC 4733 telephone-events in the call's RTP stream, sans-I/O.

Theory of operation
-------------------
The SIP leg's RTP stream has one slot per 20 ms tick of the worker's pacer
(:mod:`telephony_edge.sip.rtp_out`). A ``send_dtmf`` request
(:class:`~telephony_edge.calls.dtmf.DtmfRequest`) becomes, once, a plan of
slots (:class:`KeyPresses`): each key takes ``ceil(duration / 20 ms)`` slots
whose packets carry the event in place of audio, then the slots of the gap
after it, and a ``w`` 25 slots of nothing. A slot of the plan is one of:

* the event's first packet: the marker bit set, the duration one slot
  (160 samples on the 8 kHz clock);
* an update: the same event, its duration grown by the slot. Updates go at
  the audio's packet interval, here 20 ms (RFC 4733 §2.5.1 and RFC 2833
  §3.6 before it: every 50 ms, or the audio codec's packet interval where
  it is known), which keeps one packet per slot;
* the last: the key's whole duration (``duration_ms`` times 8 samples, which
  may end inside the slot) with the E bit, then sent twice more in the next
  two slots, unchanged (the end is sent three times, RFC 4733 §2.5.1);
* ``None``: a quiet slot, which carries what it would without the keys
  (the agent's audio or encoded silence).

Every packet of one event carries the timestamp of its first slot, and takes
the stream's next sequence number and SSRC; the slots it takes move the
stream's timestamp on as audio slots do (:meth:`OutboundStream.event`), so
after the event the audio goes on at the timestamp of its own slot, past the
event's end: the stream stays monotonic and continuous. The agent's
audio that falls into an event's slots is not sent (the key replaces it); in
quiet slots between keys it plays as usual. The leg asks :attr:`sounding`
before it sends the agent's frame and takes one :meth:`step` per tick.

Rules: no I/O and no clock here; the plan is built once per request.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Final

from telephony_edge.calls.dtmf import GAP_MS, KEYS, PAUSE, PAUSE_MS, DtmfRequest

SLOT_MS: Final = 20
SAMPLES_PER_MS: Final = 8  # telephone-event's clock: the 8000 Hz the edge's SDP names
END_PACKETS: Final = 3
VOLUME: Final = 10  # -10 dBm0, the power of a key press as phones send it
EVENT: Final = struct.Struct("!BBH")  # event, E|R|volume, duration (RFC 4733 §2.3)


@dataclass(frozen=True, slots=True)
class EventSlot:
    """One slot's telephone-event packet payload; ``marker`` on an event's first."""

    payload: bytes
    marker: bool


def event_payload(key: str, duration: int, end: bool) -> bytes:
    """The 4-byte payload of one telephone-event packet (RFC 4733 §2.3)."""
    return EVENT.pack(KEYS.index(key), (0x80 if end else 0) | VOLUME, duration)


def plan(request: DtmfRequest) -> list[EventSlot | None]:
    """Every slot of ``request``, from its first key's first packet to the end of its last gap."""
    slots: list[EventSlot | None] = []
    quiet_after = math.ceil(GAP_MS / SLOT_MS) - (END_PACKETS - 1)
    for char in request.digits:
        if char == PAUSE:
            slots += [None] * (PAUSE_MS // SLOT_MS)
            continue
        total = request.duration_ms * SAMPLES_PER_MS
        count = math.ceil(request.duration_ms / SLOT_MS)
        step = SLOT_MS * SAMPLES_PER_MS
        for k in range(count - 1):
            slots.append(EventSlot(event_payload(char, (k + 1) * step, False), k == 0))
        last = event_payload(char, total, True)
        slots.append(EventSlot(last, count == 1))
        slots += [EventSlot(last, False)] * (END_PACKETS - 1)
        slots += [None] * max(0, quiet_after)
    return slots


class KeyPresses:
    """One request's slots, taken one per tick; see the module docstring."""

    __slots__ = ("_next", "_slots", "payload_type", "start")

    def __init__(self, request: DtmfRequest, payload_type: int) -> None:
        """``payload_type``: the negotiated telephone-event payload type."""
        self.payload_type = payload_type
        self._slots = plan(request)
        self._next = 0
        self.start: int | None = None  # the RTP timestamp of the current event's first slot

    @property
    def done(self) -> bool:
        return self._next >= len(self._slots)

    @property
    def sounding(self) -> bool:
        """The next slot is an event's: the agent's frame for it is not sent."""
        return not self.done and self._slots[self._next] is not None

    def step(self) -> EventSlot | None:
        """This tick's slot (None: a quiet one, or the plan is over); moves to the next."""
        if self.done:
            return None
        slot = self._slots[self._next]
        self._next += 1
        return slot
