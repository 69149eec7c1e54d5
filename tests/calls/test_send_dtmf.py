"""``send_dtmf`` through a whole call: agent core → bridge → the leg, and refusals back.

The agent core is the test's own (:class:`tests.dtmf_core.DtmfCore`); the
leg is the test leg, which records the requests it was given.
"""

from __future__ import annotations

import asyncio
from typing import Any

from telephony_edge import metrics
from telephony_edge.calls.dtmf import DtmfRequest
from telephony_edge.calls.leg import Capabilities, LegEnded
from telephony_edge.calls.record import CallState, CallStatus
from tests.calls.test_bridge import start_call
from tests.conftest import Edge, TestLeg, edge_settings, wait_for
from tests.dtmf_core import DtmfCore


def bad_input() -> float:
    return metrics.BAD_INPUT.labels(source="agent-core")._value.get()


def dtmf_out(outcome: str) -> float:
    return metrics.DTMF_OUT.labels(provider="test", outcome=outcome)._value.get()


async def call_with(make_edge: Any, core: DtmfCore, leg: TestLeg) -> Any:
    await core.start()
    edge: Edge = await make_edge(edge_settings(agent_core={"url": core.url}))
    record, task = await start_call(edge, leg)
    await wait_for(lambda: record.state is CallState.ACTIVE)
    return record, task


async def hang_up(leg: TestLeg, task: Any) -> None:
    leg.events.put_nowait(LegEnded("completed"))
    final = await asyncio.wait_for(task, 5)
    assert final.call_status is CallStatus.USER_ENDED  # nothing of the DTMF ended the call


async def test_the_agents_keys_reach_the_leg_in_order(make_edge: Any) -> None:
    core = DtmfCore([{"digits": "1w2", "duration_ms": 120}, {"digits": "#"}, {"digits": "a"}])
    leg = TestLeg()
    sent = dtmf_out("sent")
    _, task = await call_with(make_edge, core, leg)
    await wait_for(lambda: len(leg.dtmf_sent) == 3)
    assert leg.dtmf_sent == [DtmfRequest("1w2", 120), DtmfRequest("#"), DtmfRequest("A")]
    assert dtmf_out("sent") == sent + 3
    await hang_up(leg, task)
    assert core.errors == {}


async def test_malformed_requests_get_an_error_back_are_counted_and_the_call_goes_on(
    make_edge: Any,
) -> None:
    core = DtmfCore(
        [
            {"digits": "12x"},
            {"digits": "1" * 33},
            {"digits": "5", "duration_ms": 5},
            {"duration_ms": 100},
            {"digits": "9"},
        ]
    )
    leg = TestLeg()
    before = bad_input()
    record, task = await call_with(make_edge, core, leg)
    await wait_for(lambda: len(core.errors[record.call_id]) == 4 and leg.dtmf_sent)
    errors = core.errors[record.call_id]
    assert {e["request"] for e in errors} == {"send_dtmf"}
    assert [e["message"].startswith("send_dtmf refused: ") for e in errors] == [True] * 4
    assert "not 'X'" in errors[0]["message"] and "longer than 32" in errors[1]["message"]
    assert "duration_ms" in errors[2]["message"] and "digits" in errors[3]["message"]
    assert bad_input() == before + 4
    assert leg.dtmf_sent == [DtmfRequest("9")]  # the good one after them went out
    assert record.state is CallState.ACTIVE
    await hang_up(leg, task)


class FailingLeg(TestLeg):
    async def send_dtmf(self, request: DtmfRequest) -> None:
        raise RuntimeError("the network refused the keys")


class MuteLeg(TestLeg):
    capabilities = Capabilities(clear=True)


async def test_a_network_that_fails_or_cannot_is_reported_to_the_core(make_edge: Any) -> None:
    for leg, why in [
        (FailingLeg(), "send_dtmf failed: the network refused the keys"),
        (MuteLeg(), "send_dtmf failed: this network cannot send DTMF"),
    ]:
        core = DtmfCore([{"digits": "1"}])
        failed = dtmf_out("failed")
        record, task = await call_with(make_edge, core, leg)
        await wait_for(lambda: core.errors[record.call_id])  # noqa: B023
        assert core.errors[record.call_id] == [{"request": "send_dtmf", "message": why}]
        assert dtmf_out("failed") == failed + 1
        await hang_up(leg, task)
        await core.server.close()


class SlowLeg(TestLeg):
    """Takes its time over each request, until the test lets it go on."""

    go: asyncio.Event

    async def send_dtmf(self, request: DtmfRequest) -> None:
        await self.go.wait()
        self.dtmf_sent.append(request)


async def test_requests_wait_their_turn_and_too_many_waiting_are_refused(make_edge: Any) -> None:
    core = DtmfCore([{"digits": str(n)} for n in range(7)])
    leg = SlowLeg()
    leg.go = asyncio.Event()
    record, task = await call_with(make_edge, core, leg)
    # one being sent and four waiting: the last two are refused at once
    await wait_for(lambda: len(core.errors[record.call_id]) == 2)
    assert all("4 requests are waiting" in e["message"] for e in core.errors[record.call_id])
    leg.go.set()
    await wait_for(lambda: len(leg.dtmf_sent) == 5)
    assert [r.digits for r in leg.dtmf_sent] == ["0", "1", "2", "3", "4"]
    await hang_up(leg, task)
