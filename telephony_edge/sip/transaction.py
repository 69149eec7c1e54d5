"""SIP transactions as sans-I/O state machines (RFC 3261 §17, RFC 6026).

Theory of operation
-------------------
A transaction is a plain object holding one state and a few timers. The
UA (:mod:`telephony_edge.sip.dialog`) gives it one event at a time with the
current time: a request or response from the wire, a response from the
transaction user (TU), or a timer that fell due. It answers with
:data:`Output`\\ s: bytes to transmit, and what to tell the TU (a timeout, a
response to pass up, that it is over). Timers are not callbacks: a
transaction keeps its deadlines and the UA asks :meth:`next_deadline` and
feeds :class:`TimerFired` when the time comes. No asyncio, no sockets, no
clock inside: the tests feed bytes and times.

Each machine's behaviour is a TABLE, ``(state, event kind) → (state, ops)``,
copied from the RFC's figure; the ops are data (:class:`Op`) that one small
interpreter carries out (send what the TU gave, resend the last response,
arm or back off a timer, tell the TU). A pair that is not in the table is
ignored: that is how a late 200 after a 487 is never sent (the TU's final in
``completed`` has no row), and how a retransmitted request in ``confirmed``
is absorbed.

Machines here
-------------
* :class:`InviteServerTransaction`: RFC 3261 §17.2.1 figure 7, with RFC
  6026's ``accepted`` state: after a 2xx the transaction stays for Timer L
  (64*T1) so that INVITE retransmissions are matched to it and create no
  second call. A retransmitted INVITE in ``accepted`` gets the 2xx again.
* :class:`NonInviteServerTransaction`: §17.2.2 figure 8 (a resent BYE gets
  the same 200 from ``completed`` until Timer J).
* :class:`NonInviteClientTransaction`: §17.1.2 figure 6, for the requests
  the edge sends in a dialog (BYE, INFO, NOTIFY, UPDATE, REFER): Timer E, F, K.
* :class:`InviteClientTransaction`: §17.1.1 figure 5 with RFC 6026's
  ``accepted`` state, for the edge's re-INVITEs (session refresh): Timer A,
  B; the ACK of a non-2xx is the transaction's (same branch), resent for each
  retransmitted final until Timer D; every 2xx is passed up (the TU ACKs it
  end to end) until Timer M.
* :class:`Uas2xxRetransmitter`: the UAS core's 2xx retransmission (§13.3.1.4):
  T1, 2T1, 4T1 … capped at T2 until the ACK; 64*T1 without one → give up
  (the UA then sends BYE and ends the call). It runs on every transport (the
  RFC: "independent of whatever transport protocols are used"), since a UDP
  hop may lie beyond a TCP one; Timers G and E are skipped on reliable
  transports, and Timers I, J and K are zero there.

Rules: tables are the whole truth about which event does what in which state;
code is only for the ops' meanings and the timer arithmetic.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from telephony_edge.sip.headers import Headers
from telephony_edge.sip.message import MAGIC_COOKIE, Request, Response


@dataclass(frozen=True, slots=True)
class Timers:
    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0


DEFAULT_TIMERS = Timers()


class State(enum.Enum):
    TRYING = "trying"
    CALLING = "calling"
    PROCEEDING = "proceeding"
    COMPLETED = "completed"
    CONFIRMED = "confirmed"
    ACCEPTED = "accepted"
    TERMINATED = "terminated"
    WAITING_ACK = "waiting_ack"
    GAVE_UP = "gave_up"


class Ev(enum.Enum):
    """Event kinds (the table's columns)."""

    REQUEST = "request"  # the request again (a retransmission), or ACK for INVITE
    ACK = "ack"
    TU_1XX = "tu_1xx"
    TU_2XX = "tu_2xx"
    TU_FINAL = "tu_final"  # 300-699 (for non-INVITE: 200-699)
    RESP_1XX = "resp_1xx"
    RESP_FINAL = "resp_final"
    TIMER_E = "E"
    TIMER_F = "F"
    TIMER_G = "G"
    TIMER_H = "H"
    TIMER_I = "I"
    TIMER_J = "J"
    TIMER_K = "K"
    TIMER_L = "L"
    TIMER_A = "A"
    TIMER_B = "B"
    TIMER_D = "D"
    TIMER_M = "M"
    RESP_2XX = "resp_2xx"
    RETRANSMIT = "retransmit"  # the 2xx retransmitter's interval timer
    GIVE_UP = "give_up"  # the 2xx retransmitter's 64*T1


class Op(enum.Enum):
    """What a table row asks for; :meth:`_Machine._run` gives each its meaning."""

    SEND = "send"  # transmit the message of the event, remember it as the last
    RESEND = "resend"  # transmit the last message again
    PASS_UP = "pass_up"  # give the event's response to the TU
    START_E = "start_E"  # retransmit interval T1 (unreliable only) and Timer F
    BACKOFF_E = "backoff_E"  # min(2*E, T2)
    E_AT_T2 = "E_at_T2"  # in proceeding E fires every T2
    START_G = "start_G"  # T1, unreliable only
    BACKOFF_G = "backoff_G"  # min(2*G, T2)
    START_H = "start_H"  # 64*T1
    START_I = "start_I"  # T4 unreliable, 0 reliable
    START_J = "start_J"  # 64*T1 unreliable, 0 reliable
    START_K = "start_K"  # T4 unreliable, 0 reliable
    START_L = "start_L"  # 64*T1
    START_A = "start_A"  # T1 doubling (unreliable only), and Timer B at 64*T1
    BACKOFF_A = "backoff_A"  # 2*A, no cap
    SEND_ACK = "send_ACK"  # the ACK of the event's non-2xx response, remembered as last
    START_D = "start_D"  # 32 s unreliable, 0 reliable
    START_M = "start_M"  # 64*T1
    START_RETRANSMIT = "start_retransmit"  # 2xx: T1, and give-up at 64*T1
    BACKOFF_RETRANSMIT = "backoff_retransmit"
    STOP_TIMERS = "stop_timers"
    TIMEOUT = "timeout"  # tell the TU: no answer (H, F) / no ACK (give-up)


# -- outputs ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Transmit:
    data: bytes


@dataclass(frozen=True, slots=True)
class PassUp:
    response: Response


@dataclass(frozen=True, slots=True)
class TimedOut:
    timer: str


@dataclass(frozen=True, slots=True)
class Terminated:
    pass


Output = Transmit | PassUp | TimedOut | Terminated

Row = tuple[State, tuple[Op, ...]]
S = State

# -- the tables (RFC figures) -------------------------------------------------------

#: RFC 3261 §17.2.1 figure 7 with RFC 6026 §7.1's accepted state.
INVITE_SERVER: dict[tuple[State, Ev], Row] = {
    (S.PROCEEDING, Ev.REQUEST): (S.PROCEEDING, (Op.RESEND,)),
    (S.PROCEEDING, Ev.TU_1XX): (S.PROCEEDING, (Op.SEND,)),
    (S.PROCEEDING, Ev.TU_2XX): (S.ACCEPTED, (Op.SEND, Op.START_L)),
    (S.PROCEEDING, Ev.TU_FINAL): (S.COMPLETED, (Op.SEND, Op.START_G, Op.START_H)),
    (S.COMPLETED, Ev.REQUEST): (S.COMPLETED, (Op.RESEND,)),
    (S.COMPLETED, Ev.TIMER_G): (S.COMPLETED, (Op.RESEND, Op.BACKOFF_G)),
    (S.COMPLETED, Ev.ACK): (S.CONFIRMED, (Op.STOP_TIMERS, Op.START_I)),
    (S.COMPLETED, Ev.TIMER_H): (S.TERMINATED, (Op.STOP_TIMERS, Op.TIMEOUT)),
    (S.CONFIRMED, Ev.REQUEST): (S.CONFIRMED, ()),
    (S.CONFIRMED, Ev.ACK): (S.CONFIRMED, ()),
    (S.CONFIRMED, Ev.TIMER_I): (S.TERMINATED, ()),
    (S.ACCEPTED, Ev.REQUEST): (S.ACCEPTED, (Op.RESEND,)),
    (S.ACCEPTED, Ev.TU_2XX): (S.ACCEPTED, (Op.SEND,)),
    (S.ACCEPTED, Ev.TIMER_L): (S.TERMINATED, ()),
}

#: RFC 3261 §17.2.2 figure 8.
NON_INVITE_SERVER: dict[tuple[State, Ev], Row] = {
    (S.TRYING, Ev.REQUEST): (S.TRYING, ()),
    (S.TRYING, Ev.TU_1XX): (S.PROCEEDING, (Op.SEND,)),
    (S.TRYING, Ev.TU_FINAL): (S.COMPLETED, (Op.SEND, Op.START_J)),
    (S.PROCEEDING, Ev.REQUEST): (S.PROCEEDING, (Op.RESEND,)),
    (S.PROCEEDING, Ev.TU_1XX): (S.PROCEEDING, (Op.SEND,)),
    (S.PROCEEDING, Ev.TU_FINAL): (S.COMPLETED, (Op.SEND, Op.START_J)),
    (S.COMPLETED, Ev.REQUEST): (S.COMPLETED, (Op.RESEND,)),
    (S.COMPLETED, Ev.TIMER_J): (S.TERMINATED, ()),
}

#: RFC 3261 §17.1.2 figure 6 (the request is sent on creation, with START_E).
NON_INVITE_CLIENT: dict[tuple[State, Ev], Row] = {
    (S.TRYING, Ev.TIMER_E): (S.TRYING, (Op.RESEND, Op.BACKOFF_E)),
    (S.TRYING, Ev.TIMER_F): (S.TERMINATED, (Op.STOP_TIMERS, Op.TIMEOUT)),
    (S.TRYING, Ev.RESP_1XX): (S.PROCEEDING, (Op.PASS_UP,)),
    (S.TRYING, Ev.RESP_FINAL): (S.COMPLETED, (Op.STOP_TIMERS, Op.PASS_UP, Op.START_K)),
    (S.PROCEEDING, Ev.TIMER_E): (S.PROCEEDING, (Op.RESEND, Op.E_AT_T2)),
    (S.PROCEEDING, Ev.TIMER_F): (S.TERMINATED, (Op.STOP_TIMERS, Op.TIMEOUT)),
    (S.PROCEEDING, Ev.RESP_1XX): (S.PROCEEDING, (Op.PASS_UP,)),
    (S.PROCEEDING, Ev.RESP_FINAL): (S.COMPLETED, (Op.STOP_TIMERS, Op.PASS_UP, Op.START_K)),
    (S.COMPLETED, Ev.RESP_1XX): (S.COMPLETED, ()),
    (S.COMPLETED, Ev.RESP_FINAL): (S.COMPLETED, ()),
    (S.COMPLETED, Ev.TIMER_K): (S.TERMINATED, ()),
}

#: RFC 3261 §17.1.1 figure 5 with RFC 6026 §7.2's accepted state.
INVITE_CLIENT: dict[tuple[State, Ev], Row] = {
    (S.CALLING, Ev.TIMER_A): (S.CALLING, (Op.RESEND, Op.BACKOFF_A)),
    (S.CALLING, Ev.TIMER_B): (S.TERMINATED, (Op.STOP_TIMERS, Op.TIMEOUT)),
    (S.CALLING, Ev.RESP_1XX): (S.PROCEEDING, (Op.STOP_TIMERS, Op.PASS_UP)),
    (S.CALLING, Ev.RESP_2XX): (S.ACCEPTED, (Op.STOP_TIMERS, Op.PASS_UP, Op.START_M)),
    (S.CALLING, Ev.RESP_FINAL): (
        S.COMPLETED,
        (Op.STOP_TIMERS, Op.PASS_UP, Op.SEND_ACK, Op.START_D),
    ),
    (S.PROCEEDING, Ev.RESP_1XX): (S.PROCEEDING, (Op.PASS_UP,)),
    (S.PROCEEDING, Ev.RESP_2XX): (S.ACCEPTED, (Op.PASS_UP, Op.START_M)),
    (S.PROCEEDING, Ev.RESP_FINAL): (S.COMPLETED, (Op.PASS_UP, Op.SEND_ACK, Op.START_D)),
    (S.COMPLETED, Ev.RESP_FINAL): (S.COMPLETED, (Op.RESEND,)),
    (S.COMPLETED, Ev.TIMER_D): (S.TERMINATED, ()),
    (S.ACCEPTED, Ev.RESP_2XX): (S.ACCEPTED, (Op.PASS_UP,)),
    (S.ACCEPTED, Ev.TIMER_M): (S.TERMINATED, ()),
}

#: RFC 3261 §13.3.1.4: the UAS core's 2xx retransmission until the ACK.
UAS_2XX: dict[tuple[State, Ev], Row] = {
    (S.WAITING_ACK, Ev.RETRANSMIT): (S.WAITING_ACK, (Op.RESEND, Op.BACKOFF_RETRANSMIT)),
    (S.WAITING_ACK, Ev.REQUEST): (S.WAITING_ACK, (Op.RESEND,)),
    (S.WAITING_ACK, Ev.ACK): (S.CONFIRMED, (Op.STOP_TIMERS,)),
    (S.WAITING_ACK, Ev.GIVE_UP): (S.GAVE_UP, (Op.STOP_TIMERS, Op.TIMEOUT)),
    (S.CONFIRMED, Ev.ACK): (S.CONFIRMED, ()),
}

_TIMER_EVENT = {ev.value: ev for ev in Ev if len(ev.value) == 1} | {
    "retransmit": Ev.RETRANSMIT,
    "give_up": Ev.GIVE_UP,
}


@dataclass(frozen=True, slots=True)
class TimerFired:
    name: str


# -- the interpreter -------------------------------------------------------------------


class _Machine:
    TABLE: dict[tuple[State, Ev], Row] = {}

    def __init__(self, state: State, reliable: bool, timers: Timers) -> None:
        self.state = state
        self.reliable = reliable
        self.t = timers
        self.last: bytes | None = None
        self.last_status = 0
        self.deadlines: dict[str, float] = {}
        self.intervals: dict[str, float] = {}

    @property
    def terminated(self) -> bool:
        return self.state in (S.TERMINATED, S.GAVE_UP)

    def next_deadline(self) -> float | None:
        return min(self.deadlines.values(), default=None)

    def tick(self, now: float) -> list[Output]:
        """Fire every timer due at ``now`` (earliest first)."""
        out: list[Output] = []
        while True:
            due = [(at, name) for name, at in self.deadlines.items() if at <= now]
            if not due:
                return out
            at, name = min(due)
            del self.deadlines[name]
            out.extend(self._event(_TIMER_EVENT[name], at, None))

    def _event(self, ev: Ev, now: float, message: Any) -> list[Output]:
        row = self.TABLE.get((self.state, ev))
        if row is None:
            return []
        self.state, ops = row
        out: list[Output] = []
        for op in ops:
            self._run(op, now, message, out)
        if self.terminated:
            self.deadlines.clear()
            out.append(Terminated())
        return out

    def _arm(self, name: str, now: float, interval: float) -> None:
        self.intervals[name] = interval
        self.deadlines[name] = now + interval

    def _run(self, op: Op, now: float, message: Any, out: list[Output]) -> None:
        t = self.t
        if op is Op.SEND:
            self.last = message.to_bytes()
            if isinstance(message, Response):
                self.last_status = message.status
            out.append(Transmit(self.last))
        elif op is Op.RESEND:
            if self.last is not None:
                out.append(Transmit(self.last))
        elif op is Op.PASS_UP:
            out.append(PassUp(message))
        elif op is Op.START_E:
            if not self.reliable:
                self._arm("E", now, t.t1)
            self._arm("F", now, 64 * t.t1)
        elif op is Op.BACKOFF_E:
            self._arm("E", now, min(2 * self.intervals["E"], t.t2))
        elif op is Op.E_AT_T2:
            self._arm("E", now, t.t2)
        elif op is Op.START_G:
            if not self.reliable:
                self._arm("G", now, t.t1)
        elif op is Op.BACKOFF_G:
            self._arm("G", now, min(2 * self.intervals["G"], t.t2))
        elif op is Op.START_H:
            self._arm("H", now, 64 * t.t1)
        elif op is Op.START_I:
            self._arm("I", now, 0.0 if self.reliable else t.t4)
        elif op is Op.START_J:
            self._arm("J", now, 0.0 if self.reliable else 64 * t.t1)
        elif op is Op.START_K:
            self._arm("K", now, 0.0 if self.reliable else t.t4)
        elif op is Op.START_L:
            self._arm("L", now, 64 * t.t1)
        elif op is Op.START_RETRANSMIT:
            self._arm("retransmit", now, t.t1)
            self._arm("give_up", now, 64 * t.t1)
        elif op is Op.BACKOFF_RETRANSMIT:
            self._arm("retransmit", now, min(2 * self.intervals["retransmit"], t.t2))
        elif op is Op.START_A:
            if not self.reliable:
                self._arm("A", now, t.t1)
            self._arm("B", now, 64 * t.t1)
        elif op is Op.BACKOFF_A:
            self._arm("A", now, 2 * self.intervals["A"])
        elif op is Op.SEND_ACK:
            assert isinstance(self, InviteClientTransaction)
            self.last = build_ack(self.request, message).to_bytes()
            out.append(Transmit(self.last))
        elif op is Op.START_D:
            self._arm("D", now, 0.0 if self.reliable else 32.0)
        elif op is Op.START_M:
            self._arm("M", now, 64 * t.t1)
        elif op is Op.STOP_TIMERS:
            self.deadlines.clear()
        elif op is Op.TIMEOUT:
            out.append(TimedOut(self.state.value))


class _ServerTransaction(_Machine):
    def __init__(self, request: Request, state: State, reliable: bool, timers: Timers) -> None:
        """``request`` is not kept: the TU answers it and a retransmission gets the last
        response's bytes. Keeping the parsed request doubled what an open transaction costs
        (3.0 → 1.6 KB each), and a flood keeps tens of thousands open in Timer J."""
        super().__init__(state, reliable, timers)

    def receive_request(self, now: float) -> list[Output]:
        """The request again (a retransmission)."""
        return self._event(Ev.REQUEST, now, None)

    def respond(self, response: Response, now: float) -> list[Output]:
        """The TU's response; ignored where the table has no row (e.g. after a final)."""
        code = response.status
        if code < 200:
            ev = Ev.TU_1XX
        elif code < 300 and isinstance(self, InviteServerTransaction):
            ev = Ev.TU_2XX
        else:
            ev = Ev.TU_FINAL
        return self._event(ev, now, response)

    @property
    def final_sent(self) -> bool:
        return self.last_status >= 200


class InviteServerTransaction(_ServerTransaction):
    TABLE = INVITE_SERVER

    def __init__(
        self, request: Request, reliable: bool = False, timers: Timers = DEFAULT_TIMERS
    ) -> None:
        super().__init__(request, S.PROCEEDING, reliable, timers)

    def receive_ack(self, now: float) -> list[Output]:
        return self._event(Ev.ACK, now, None)


class NonInviteServerTransaction(_ServerTransaction):
    TABLE = NON_INVITE_SERVER

    def __init__(
        self, request: Request, reliable: bool = False, timers: Timers = DEFAULT_TIMERS
    ) -> None:
        super().__init__(request, S.TRYING, reliable, timers)


class NonInviteClientTransaction(_Machine):
    TABLE = NON_INVITE_CLIENT

    def __init__(
        self, request: Request, reliable: bool = False, timers: Timers = DEFAULT_TIMERS
    ) -> None:
        super().__init__(S.TRYING, reliable, timers)
        self.request = request

    def start(self, now: float) -> list[Output]:
        """Send the request and arm Timers E and F."""
        out: list[Output] = []
        self._run(Op.SEND, now, self.request, out)
        self._run(Op.START_E, now, None, out)
        return out

    def receive_response(self, response: Response, now: float) -> list[Output]:
        ev = Ev.RESP_1XX if response.status < 200 else Ev.RESP_FINAL
        return self._event(ev, now, response)


class InviteClientTransaction(_Machine):
    TABLE = INVITE_CLIENT

    def __init__(
        self, request: Request, reliable: bool = False, timers: Timers = DEFAULT_TIMERS
    ) -> None:
        super().__init__(S.CALLING, reliable, timers)
        self.request = request

    def start(self, now: float) -> list[Output]:
        """Send the INVITE and arm Timers A and B."""
        out: list[Output] = []
        self._run(Op.SEND, now, self.request, out)
        self._run(Op.START_A, now, None, out)
        return out

    def receive_response(self, response: Response, now: float) -> list[Output]:
        code = response.status
        ev = Ev.RESP_1XX if code < 200 else Ev.RESP_2XX if code < 300 else Ev.RESP_FINAL
        return self._event(ev, now, response)


def build_ack(invite: Request, response: Response) -> Request:
    """§17.1.1.3: the ACK of a non-2xx final to ``invite`` (same branch, the response's To)."""
    headers = Headers()
    headers.add("Via", invite.headers.get_all("Via")[0])
    for name in ("Max-Forwards", "From"):
        value = invite.headers.get(name)
        if value is not None:
            headers.add(name, value)
    headers.add("To", response.headers.get("To") or "")
    headers.add("Call-ID", invite.call_id())
    headers.add("CSeq", f"{invite.cseq().seq} ACK")
    for name, value in invite.headers.raw("Route"):
        headers.add(name, value)
    return Request(headers, b"", "ACK", invite.uri)


class Uas2xxRetransmitter(_Machine):
    """§13.3.1.4; ``transmit`` of the first 2xx is :meth:`start`."""

    TABLE = UAS_2XX

    def __init__(self, response: Response, timers: Timers = DEFAULT_TIMERS) -> None:
        super().__init__(S.WAITING_ACK, False, timers)
        self.response = response
        self.cseq = response.cseq().seq

    def start(self, now: float) -> list[Output]:
        out: list[Output] = []
        self._run(Op.SEND, now, self.response, out)
        self._run(Op.START_RETRANSMIT, now, None, out)
        return out

    def receive_ack(self, now: float) -> list[Output]:
        return self._event(Ev.ACK, now, None)

    def request_again(self, now: float) -> list[Output]:
        return self._event(Ev.REQUEST, now, None)

    @property
    def terminated(self) -> bool:
        return self.state in (S.CONFIRMED, S.GAVE_UP)


# -- matching (§17.2.3) ----------------------------------------------------------------

Key = tuple[str, ...]


def server_key(request: Request) -> Key:
    """The server transaction a request belongs to: branch + sent-by + method,
    with ACK matching its INVITE; CANCEL keeps its own (see :func:`cancel_target`).
    Requests from RFC 2543 peers (no magic cookie) match on the §17.2.3 fields, and
    so does a branch that is the cookie alone (RFC 4475 §3.2.1 ``badbranch``): it
    names no transaction, and taken as one it would make every such request from
    that sender a retransmission of the first."""
    via = request.top_via()
    method = "INVITE" if request.method == "ACK" else request.method
    branch = via.branch or ""
    if branch.startswith(MAGIC_COOKIE) and len(branch) > len(MAGIC_COOKIE):
        return ("3261", branch, via.sent_by, method)
    to_tag = request.to().tag or "" if request.method != "ACK" else ""
    return (
        "2543",
        request.uri,
        to_tag,
        request.from_().tag or "",
        request.call_id(),
        str(request.cseq().seq),
        str(via),
        method,
    )


def cancel_target(request: Request) -> Key:
    """The INVITE server transaction a CANCEL (same branch) is meant for."""
    key = server_key(request)
    return (*key[:-1], "INVITE")


def client_key(branch: str, method: str) -> Key:
    return ("client", branch, "INVITE" if method == "ACK" else method)
