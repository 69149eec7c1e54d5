"""The call machine's answering-machine rows: the result decides the status, not the shell."""

from __future__ import annotations

from telephony_edge.calls import machine as m
from telephony_edge.calls.record import CallState, CallStatus

LIMITS = m.Limits(max_duration_s=600.0, inactivity_timeout_s=300.0)


def live(voicemail: str) -> m.CallMachine:
    machine = m.CallMachine(LIMITS, 0.0, voicemail)
    machine.handle(m.Start(), 0.0)
    machine.handle(m.AgentReady(), 0.1)
    assert machine.state is CallState.ACTIVE
    return machine


def test_a_human_is_told_to_the_agent_and_the_call_goes_on() -> None:
    machine = live("hangup")
    actions = machine.handle(m.AmdReport("human", "edge", 1540), 2.0)
    assert actions == [m.SendAmdResult("human", False)]
    assert machine.amd == {
        "result": "human",
        "beep": False,
        "source": "edge",
        "decided_after_ms": 1540,
    }
    # the first result stands: a later machine report changes nothing
    assert machine.handle(m.AmdReport("machine", "edge", 4000), 4.0) == []
    assert machine.handle(m.AgentCommand("end_call"), 5.0)[0] == m.StopTasks()
    assert machine.call_status is CallStatus.AGENT_ENDED


def test_a_machine_with_hangup_ends_the_call_voicemail_hangup() -> None:
    machine = live("hangup")
    actions = machine.handle(m.AmdReport("machine", "vonage", 3000), 3.0)
    assert tuple(actions) == m.TEARDOWN
    assert machine.call_status is CallStatus.VOICEMAIL_HANGUP
    assert machine.amd is not None and machine.amd["source"] == "vonage"


def test_a_machine_before_the_agent_is_ready_is_hung_up_too() -> None:
    machine = m.CallMachine(LIMITS, 0.0, "hangup")
    machine.handle(m.Start(), 0.0)
    machine.handle(m.AmdReport("machine", "edge", 2200), 2.2)
    assert machine.call_status is CallStatus.VOICEMAIL_HANGUP


def test_leave_message_waits_for_the_beep_then_end_call_is_voicemail_message() -> None:
    machine = live("leave_message")
    assert machine.handle(m.AmdReport("machine", "edge", 2220), 2.2) == []
    assert machine.next_deadline() == 2.2 + m.VOICEMAIL_WAIT_S
    actions = machine.handle(m.AmdReport("machine", "edge", 14280, True, True), 14.3)
    assert actions == [m.SendAmdResult("machine", True)]
    assert machine.amd == {
        "result": "machine",
        "beep": True,
        "source": "edge",
        "decided_after_ms": 2220,
    }
    assert machine.handle(m.AgentCommand("end_call", playout_empty=False), 15.0) == []
    assert tuple(machine.handle(m.PlayoutDrained(), 17.4)) == m.TEARDOWN_AFTER_PLAYOUT
    assert machine.call_status is CallStatus.VOICEMAIL_MESSAGE


def test_a_greeting_that_never_ends_gets_the_message_at_the_deadline() -> None:
    machine = live("leave_message")
    machine.handle(m.AmdReport("machine", "vonage", 4000), 4.0)
    assert machine.handle(m.Tick(), 4.0 + m.VOICEMAIL_WAIT_S) == [m.SendAmdResult("machine", False)]
    assert machine.handle(m.AgentCommand("onsessionended"), 200.0)[0] == m.StopTasks()
    assert machine.call_status is CallStatus.VOICEMAIL_MESSAGE


def test_a_result_before_the_agent_is_ready_reaches_it_once_ready() -> None:
    machine = m.CallMachine(LIMITS, 0.0, "leave_message")
    machine.handle(m.Start(), 0.0)
    assert machine.handle(m.AmdReport("machine", "twilio", 9000, True, False), 1.0) == []
    actions = machine.handle(m.AgentReady(), 1.5)
    assert actions[-1] == m.SendAmdResult("machine", False)


def test_reports_are_ignored_when_detection_was_not_asked_for() -> None:
    machine = live("")
    assert machine.handle(m.AmdReport("machine", "edge", 2000, True, True), 2.0) == []
    assert machine.amd is None and machine.state is CallState.ACTIVE
