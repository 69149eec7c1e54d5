"""The call's state machine on its own: events and times in, actions out, no sleeping."""

from __future__ import annotations

import random
from typing import Any

import pytest

from telephony_edge.calls import machine as m
from telephony_edge.calls.dtmf import DtmfRequest
from telephony_edge.calls.record import CallState, CallStatus

LIMITS = m.Limits(max_duration_s=600.0, inactivity_timeout_s=30.0)

#: one event of every kind (the commands in several flavours)
EVENTS: list[Any] = [
    m.Start(),
    m.Superseded("ended elsewhere"),
    m.Refused("draining"),
    m.AgentReady(),
    m.AgentFailed("connect", "refused"),
    m.AgentClosed("closed"),
    m.AgentCommand("pause"),
    m.AgentCommand("unpause"),
    m.AgentCommand("clear"),
    m.AgentCommand("end_call", playout_empty=True),
    m.AgentCommand("end_call", playout_empty=False),
    m.AgentCommand("transfer_call", {"destination": "+15555550123"}),
    m.AgentCommand("transfer_call", {"destination": "not a number"}),
    m.AgentCommand("onsessionended"),
    m.AgentCommand("send_dtmf", {"digits": "12#"}),
    m.AgentCommand("send_dtmf", {"digits": "12x"}),
    m.AgentCommand("something_else"),
    m.PlayoutDrained(),
    m.LegGone("completed"),
    m.LegGone("failed", error="socket reset"),
    m.LegGone("completed", moved=True),
    m.HandOff("drain"),
    m.Control("hangup"),
    m.Control("transfer", "sip:desk@pbx.example.com"),
    m.TransferDone("+15555550123", "agent"),
    m.TransferDone("+15555550123", "api", error="busy"),
    m.AmdReport("human", "edge", 1500),
    m.AmdReport("machine", "twilio", 9000, message_end=True, beep=True),
    m.Tick(),
    m.Cancelled(),
    m.Failed("caller", "boom"),
    m.TeardownDone(),
]
TEARDOWN_KINDS = {type(a) for a in m.TEARDOWN}


def machine_in(state: CallState) -> m.CallMachine:
    machine = m.CallMachine(LIMITS, now=0.0)
    path = {
        CallState.CONNECTING: [m.Start()],
        CallState.ACTIVE: [m.Start(), m.AgentReady()],
        CallState.ENDING: [m.Start(), m.Cancelled()],
        CallState.ENDED: [m.Start(), m.Cancelled(), m.TeardownDone()],
    }[state]
    for event in path:
        machine.handle(event, 1.0)
    assert machine.state is state
    return machine


def teardown_in(actions: list[m.Action]) -> list[m.Action]:
    return [a for a in actions if type(a) in TEARDOWN_KINDS and not isinstance(a, m.WriteState)]


ORDER = [CallState.CONNECTING, CallState.ACTIVE, CallState.ENDING, CallState.ENDED]


@pytest.mark.parametrize("state", ORDER)
@pytest.mark.parametrize("event", EVENTS, ids=lambda e: type(e).__name__)
def test_every_event_in_every_state(state: CallState, event: Any) -> None:
    machine = machine_in(state)
    status_before = machine.call_status
    actions = machine.handle(event, 2.0)
    # only forward
    assert ORDER.index(machine.state) >= ORDER.index(state)
    if state in (CallState.ENDING, CallState.ENDED):
        # once ending, nothing but the teardown's own completion does anything
        assert actions == []
        assert machine.call_status is status_before
        return
    if machine.state is CallState.ENDING:
        if isinstance(event, m.Superseded):
            assert actions == list(m.RELEASE_ONLY)
            assert machine.call_status is None
            return
        if machine.moved is not None:  # goes on elsewhere: no end of its own
            cause = "network" if isinstance(event, m.LegGone) else "drain"
            assert (machine.moved, actions) == (cause, m.hand_off(cause))
            assert machine.call_status is None and machine.next_deadline() is None
            return
        assert machine.call_status is not None
        kinds = [type(a) for a in actions]
        expected = [
            type(a)
            for a in m.TEARDOWN
            if machine.hangup_network or not isinstance(a, m.HangupNetwork)
        ]
        assert kinds == expected  # each teardown action exactly once, in order
        assert machine.next_deadline() is None
    else:
        assert teardown_in(actions) == []
        assert machine.call_status is None


def test_random_event_sequences_end_exactly_once() -> None:
    rng = random.Random(20261201)
    for _ in range(3000):
        machine = m.CallMachine(LIMITS, now=0.0)
        teardowns = 0
        statuses = set()
        now = 0.0
        for event in rng.choices(EVENTS, k=rng.randint(1, 12)):
            now += rng.random() * 20
            before = machine.state
            actions = machine.handle(event, now)
            teardowns += sum(isinstance(a, m.QueueWebhook) for a in actions)
            if machine.call_status is not None:
                statuses.add(machine.call_status)
            assert ORDER.index(machine.state) >= ORDER.index(before)
        assert teardowns <= 1
        assert len(statuses) <= 1  # the first cause wins, never overwritten
        ended = machine.state in (CallState.ENDING, CallState.ENDED)
        assert teardowns == (1 if ended and machine.call_status is not None else 0)


def test_end_call_lets_the_goodbye_play_then_ends_bounded() -> None:
    machine = machine_in(CallState.ACTIVE)
    assert machine.handle(m.AgentCommand("end_call", playout_empty=False), 10.0) == []
    assert machine.ending_after_playout
    assert machine.next_deadline() == 10.0 + m.END_CALL_PLAYOUT_S
    actions = machine.handle(m.PlayoutDrained(), 12.0)
    assert machine.call_status is CallStatus.AGENT_ENDED
    assert m.HangupNetwork(after_playout=True) in actions  # the network plays the end first

    stuck = machine_in(CallState.ACTIVE)
    stuck.handle(m.AgentCommand("end_call", playout_empty=False), 10.0)
    assert stuck.handle(m.Tick(), 24.0) == []
    stuck.note_activity(24.0)
    stuck.handle(m.Tick(), 10.0 + m.END_CALL_PLAYOUT_S)
    assert stuck.call_status is CallStatus.AGENT_ENDED


def test_limits_are_deadlines() -> None:
    idle = machine_in(CallState.ACTIVE)
    assert idle.next_deadline() == LIMITS.inactivity_timeout_s  # idle since it started at 0
    assert idle.handle(m.Tick(), 29.9) == []
    idle.note_activity(30.0)
    assert idle.next_deadline() == 60.0
    idle.handle(m.Tick(), 60.0)
    assert idle.call_status is CallStatus.TIMEOUT
    assert "no activity" in (idle.error_message or "")

    long = machine_in(CallState.ACTIVE)
    for t in range(10, 600, 10):
        long.note_activity(float(t))
        assert long.handle(m.Tick(), float(t)) == []
    long.handle(m.Tick(), 600.0)
    assert long.call_status is CallStatus.TIMEOUT
    assert "maximum call duration" in (long.error_message or "")


def test_agent_transfer_checks_the_destination_and_reports_failures() -> None:
    machine = machine_in(CallState.ACTIVE)
    [report] = machine.handle(m.AgentCommand("transfer_call", {"destination": "ext 12"}), 2.0)
    assert isinstance(report, m.ReportToAgent) and "transfer refused" in report.message
    assert machine.state is CallState.ACTIVE

    [transfer] = machine.handle(
        m.AgentCommand("transfer_call", {"destination": "+1 555 555 0123"}), 3.0
    )
    assert transfer == m.Transfer("+15555550123", "agent")
    [busy] = machine.handle(m.AgentCommand("transfer_call", {"destination": "+15555550124"}), 3.5)
    assert isinstance(busy, m.ReportToAgent)  # one transfer at a time
    [failed] = machine.handle(m.TransferDone("+15555550123", "agent", error="403"), 4.0)
    assert isinstance(failed, m.ReportToAgent) and "403" in failed.message
    assert machine.state is CallState.ACTIVE  # the call goes on

    machine.handle(
        m.AgentCommand("transfer_call", {"destination": "sip:desk@pbx.example.com"}), 5.0
    )
    actions = machine.handle(m.TransferDone("sip:desk@pbx.example.com", "agent"), 6.0)
    assert machine.call_status is CallStatus.AGENT_ENDED
    assert machine.transferred_to == "sip:desk@pbx.example.com"
    assert not any(isinstance(a, m.HangupNetwork) for a in actions)  # the network has the caller


def test_send_dtmf_is_checked_then_sent_and_the_call_goes_on() -> None:
    machine = machine_in(CallState.ACTIVE)
    [send] = machine.handle(m.AgentCommand("send_dtmf", {"digits": "1w#a"}), 2.0)
    assert send == m.SendDtmf(DtmfRequest("1w#A", 250))
    [refused] = machine.handle(m.AgentCommand("send_dtmf", {"digits": "1", "duration_ms": 9}), 3.0)
    assert isinstance(refused, m.ReportToAgent) and refused.bad_input
    assert refused.method == "send_dtmf" and "duration_ms" in refused.message
    assert machine.state is CallState.ACTIVE and machine.call_status is None


def test_api_transfer_and_hangup() -> None:
    machine = machine_in(CallState.ACTIVE)
    assert machine.handle(m.Control("transfer", "bogus"), 2.0) == []  # the API reports it
    [transfer] = machine.handle(m.Control("transfer", "+15555550123"), 2.0)
    machine.handle(m.TransferDone(transfer.destination, "api"), 3.0)  # type: ignore[union-attr]
    assert machine.call_status is CallStatus.API_ENDED

    hung = machine_in(CallState.CONNECTING)
    actions = hung.handle(m.Control("hangup"), 2.0)
    assert hung.call_status is CallStatus.API_ENDED
    assert m.HangupNetwork() in actions  # at once: only the agent's last words play out


def test_every_end_the_agent_asks_for_lets_the_network_play_its_last_words() -> None:
    for command in (
        m.AgentCommand("end_call", playout_empty=True),
        m.AgentCommand("onsessionended"),
    ):
        machine = machine_in(CallState.ACTIVE)
        assert machine.handle(command, 2.0) == list(m.TEARDOWN_AFTER_PLAYOUT)
    stuck = machine_in(CallState.ACTIVE)
    stuck.handle(m.AgentCommand("end_call", playout_empty=False), 10.0)
    actions = stuck.handle(m.Tick(), 10.0 + m.END_CALL_PLAYOUT_S)
    assert actions == list(m.TEARDOWN_AFTER_PLAYOUT)


def test_the_caller_hanging_up_does_not_hang_up_the_network() -> None:
    machine = machine_in(CallState.ACTIVE)
    actions = machine.handle(m.LegGone("completed"), 2.0)
    assert machine.call_status is CallStatus.USER_ENDED
    assert machine.provider_status == "completed"
    assert not any(isinstance(a, m.HangupNetwork) for a in actions)
    failed = machine_in(CallState.ACTIVE)
    failed.handle(m.LegGone("completed", error="stream error"), 2.0)
    assert failed.call_status is CallStatus.ERROR
    assert "stream error" in (failed.error_message or "")


def test_barge_in_and_pause_are_actions_not_state() -> None:
    machine = machine_in(CallState.ACTIVE)
    assert machine.handle(m.AgentCommand("clear"), 2.0) == [m.ClearAudio()]
    assert machine.handle(m.AgentCommand("pause"), 2.0) == [m.SetPaused(True)]
    assert machine.handle(m.AgentCommand("unpause"), 2.0) == [m.SetPaused(False)]
    assert machine.state is CallState.ACTIVE


def test_a_resumed_call_goes_live_from_the_record_as_another_worker_left_it() -> None:
    fresh = machine_in(CallState.CONNECTING)
    assert fresh.handle(m.AgentReady(), 2.0)[0] == m.WriteState(
        CallState.ACTIVE, (CallState.CONNECTING,)
    )
    resumed = m.CallMachine(LIMITS, now=100.0, resumed=True, elapsed_s=590.0)
    resumed.handle(m.Start(), 100.0)
    assert resumed.handle(m.AgentReady(), 101.0)[0] == m.WriteState(
        CallState.ACTIVE, (CallState.CONNECTING, CallState.ACTIVE)
    )
    assert resumed.next_deadline() == 110.0  # the maximum counts the time it ran before
    resumed.handle(m.Tick(), 110.0)
    assert resumed.call_status is CallStatus.TIMEOUT


def test_a_moved_call_hands_off_without_hanging_up_or_reporting() -> None:
    machine = machine_in(CallState.ACTIVE)
    actions = machine.handle(m.HandOff("drain"), 5.0)
    assert not any(
        isinstance(a, m.HangupNetwork | m.WriteState | m.QueueWebhook | m.ReleaseSlot)
        for a in actions
    )
    assert [type(a) for a in actions] == [m.StopTasks, m.SaveLive, m.CloseAgent, m.HandOffLeg]
    assert machine.handle(m.LegGone("completed"), 6.0) == []  # once moving, nothing else
    assert machine.call_status is None
