"""Transactions by key and by time: a packet costs the same with 10 000 transactions open."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from telephony_edge.sip import transaction
from telephony_edge.sip.message import Request
from telephony_edge.sip.parse import parse_message
from telephony_edge.sip.transaction import NonInviteServerTransaction
from telephony_edge.sip.tx_table import TransactionTable
from tests.sip import wire
from tests.sip.test_ua import ack, codes, make_ua, run, sent, start

PEER = wire.PEER
OPEN = 10_000


@contextmanager
def deadline_reads() -> Iterator[list[int]]:
    """How many times any machine's ``next_deadline`` is read inside the block."""
    count = [0]
    original = transaction._Machine.next_deadline

    def counted(self: transaction._Machine) -> float | None:
        count[0] += 1
        return original(self)

    transaction._Machine.next_deadline = counted  # type: ignore[method-assign]
    try:
        yield count
    finally:
        transaction._Machine.next_deadline = original  # type: ignore[method-assign]


def options(n: int) -> bytes:
    return wire.request("OPTIONS", branch=f"z9hG4bKflood{n}", call_id=f"flood-{n}", cseq=n + 1)


def test_one_packet_and_the_next_deadline_read_a_few_machines_not_every_open_one() -> None:
    """Issue 19: each packet walked every open transaction (4 to 5 ms at 10k). Now a
    packet, the next deadline and a tick with nothing due read O(1) machines."""
    ua = make_ua()
    for n in range(OPEN):
        assert codes(ua.receive(options(n), PEER, n / 1000)) == [200]
    assert len(ua._machines) == OPEN  # all in Timer J (64*T1 = 32 s)
    now = OPEN / 1000
    with deadline_reads() as reads:
        assert codes(ua.receive(options(OPEN), PEER, now)) == [200]
        first = ua.next_deadline()
        assert ua.tick(now) == []
    assert first == pytest.approx(64 * 0.5)  # the first OPTIONS' Timer J
    assert reads[0] <= 10


def test_timers_fire_in_order_and_the_table_empties() -> None:
    ua = make_ua()
    for n in range(100):
        ua.receive(options(n), PEER, n * 0.01)
    run(ua, 0.5 + 32.0)  # Timer J of the first half
    assert len(ua._machines) == 49
    run(ua, 100.0)
    assert not ua._machines and ua.next_deadline() is None


def test_table_keeps_the_heap_bounded_by_live_deadlines() -> None:
    """Retouching a machine pushes a new heap item; stale ones are compacted away."""
    table: TransactionTable[_Entry] = TransactionTable()
    machine = NonInviteServerTransaction(_request(), reliable=False)
    table[("k",)] = _Entry(machine)
    for i in range(1000):
        machine.deadlines["J"] = float(i)
        table.touch(("k",))
    assert table.next_deadline() == 999.0
    assert len(table._heap) <= 2 * 1 + 64 + 1
    assert table.pop_due(998.0) is None
    assert table.pop_due(999.0) == ("k",) and table.next_deadline() is None
    table.pop(("k",))
    assert not table and table.pop_due(1e9) is None


class _Entry:
    def __init__(self, machine: NonInviteServerTransaction) -> None:
        self.machine = machine


def _request() -> Request:
    msg = parse_message(wire.request("OPTIONS"))
    assert isinstance(msg, Request)
    return msg


def test_a_full_table_answers_new_requests_503_and_calls_go_on() -> None:
    """A flood from many addresses, each under its rate, cannot grow the table for ever:
    past ``max_transactions`` a request outside a dialog gets a stateless 503 with
    Retry-After, and the live call's BYE is still answered."""
    ua = make_ua(max_transactions=50)
    ref, _ = start(ua)
    ua.answer(ref, 40000, 0.0)
    ua.receive(ack(ref), PEER, 0.1)
    n = 0
    while len(ua._machines) < 50:
        assert codes(ua.receive(options(n), PEER, 0.2)) == [200]
        n += 1
    refused = sent(ua.receive(options(n), PEER, 0.3))
    assert [wire.status(s.data) for s in refused] == [503]
    assert b"Retry-After: 5" in refused[0].data and len(ua._machines) == 50
    assert ua.last_bad is not None and ua.last_bad.status == 503
    bye = wire.request("BYE", to_tag=ref, branch="z9hG4bKbye", cseq=2)
    assert codes(ua.receive(bye, PEER, 0.4)) == [200]


def test_an_open_server_transaction_keeps_no_parsed_request() -> None:
    """What 32 s of Timer J costs per flood packet: the response's bytes and the timers,
    not the request it answered (that doubled it: 3.0 → 1.6 KB each)."""
    ua = make_ua()
    ua.receive(options(0), PEER, 0.0)
    (entry,) = (ua._machines[key] for key in ua._machines)
    assert entry.machine.last is not None  # the 200, for a retransmission
    assert not hasattr(entry.machine, "request")
