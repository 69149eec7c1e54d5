"""Whole calls through real sockets: test leg → bridge → built-in agent core → back."""

from __future__ import annotations

import asyncio
import audioop
import itertools
import statistics
from dataclasses import dataclass
from typing import Any

from telephony_edge.audio.frames import SILENCE_FRAME
from telephony_edge.calls.leg import Clock, Dtmf, FrameSource, LegEnded
from telephony_edge.calls.record import CallRecord, CallState, CallStatus
from tests.conftest import Edge, TestLeg, edge_settings, wait_for


async def start_call(
    edge: Edge, leg: TestLeg, **kwargs: Any
) -> tuple[CallRecord, asyncio.Task[CallRecord]]:
    service = edge.services.call_service
    record = await service.create(
        agent_id=kwargs.pop("agent_id", "echo"), provider="test", direction="inbound", **kwargs
    )
    return record, asyncio.create_task(service.run(record, leg))


def voiced(frame: bytes) -> bool:
    return audioop.rms(frame, 2) > 300


async def test_echo_round_trip_and_user_hangup(make_edge: Any, speech: bytes) -> None:
    edge: Edge = await make_edge()
    leg = TestLeg()
    record, task = await start_call(edge, leg)
    # the caller speaks from the first frame, while the agent link is still connecting
    await leg.speak(speech, silence_after_s=1.0)
    await wait_for(lambda: record.state is CallState.ACTIVE)
    # greeting (chime) plays first, then the echo of what was said
    await wait_for(lambda: sum(voiced(f) for _, f in leg.heard) * 0.02 > len(speech) / 32000 * 0.6)
    leg.events.put_nowait(LegEnded("completed"))
    final = await asyncio.wait_for(task, 5)
    assert final.call_status is CallStatus.USER_ENDED
    assert final.state is CallState.ENDED
    assert leg.closed and not leg.hung_up  # the caller hung up; nothing to hang up
    stored = await edge.services.coordinator.get_call(record.call_id)
    assert stored is not None and stored.data["call_status"] == CallStatus.USER_ENDED
    assert stored.data["state"] == CallState.ENDED
    # agent audio is played at real time (not as fast as the core sends it):
    # within each run of playback frames are 20 ms apart; the median leaves
    # out each talkspurt's lead (sent at once) and a late tick's catch-up
    times = [t for t, _ in leg.heard]
    steps = [b - a for a, b in itertools.pairwise(times) if b - a < 0.1]
    assert len(steps) > 50
    assert 0.018 < statistics.median(steps) < 0.022


async def test_barge_in_clears_playback(make_edge: Any, speech: bytes) -> None:
    edge: Edge = await make_edge()
    leg = TestLeg()
    _record, task = await start_call(edge, leg)
    await leg.speak(speech, silence_after_s=1.0)
    # wait until the echo reply is playing, then talk over it
    start = asyncio.get_running_loop().time()
    await wait_for(lambda: len(leg.heard) > 0 and leg.heard[-1][0] > start + 0.3)
    await wait_for(lambda: voiced(leg.heard[-1][1]))
    barge_in = asyncio.get_running_loop().time()
    await leg.speak(speech[:32000], silence_after_s=0.0)
    await wait_for(lambda: any(t > barge_in for t in leg.clears), within=5)
    cleared_at = next(t for t in leg.clears if t > barge_in)
    after = [f for t, f in leg.heard if t > cleared_at + 0.1]
    assert not any(voiced(f) for f in after[:20]), "playback continued >100 ms after clear"
    leg.events.put_nowait(LegEnded("completed"))
    assert (await asyncio.wait_for(task, 5)).call_status is CallStatus.USER_ENDED


async def test_dtmf_end_call_is_agent_ended_and_hangs_up(make_edge: Any) -> None:
    edge: Edge = await make_edge()
    leg = TestLeg()
    record, task = await start_call(edge, leg)
    await wait_for(lambda: record.state is CallState.ACTIVE)
    leg.events.put_nowait(Dtmf("9"))
    final = await asyncio.wait_for(task, 20)
    assert final.call_status is CallStatus.AGENT_ENDED
    assert leg.hung_up


async def test_transfer_call_goes_to_the_leg(make_edge: Any) -> None:
    edge: Edge = await make_edge()
    leg = TestLeg()
    record, task = await start_call(edge, leg, metadata={"transfer_to": "+15555550177"})
    await wait_for(lambda: record.state is CallState.ACTIVE)
    leg.events.put_nowait(Dtmf("0"))
    final = await asyncio.wait_for(task, 10)
    assert leg.transfers == ["+15555550177"]
    assert final.call_status is CallStatus.AGENT_ENDED
    assert final.transferred_to == "+15555550177"
    assert not leg.hung_up


async def test_agent_core_unreachable_ends_with_error(make_edge: Any) -> None:
    from tests.conftest import free_port

    settings = edge_settings(agent_core={"url": f"ws://127.0.0.1:{free_port()}/agent"})
    edge: Edge = await make_edge(settings)
    leg = TestLeg()
    _, task = await start_call(edge, leg)
    final = await asyncio.wait_for(task, 10)
    assert final.call_status is CallStatus.ERROR
    assert final.error_message and "connect" in final.error_message
    assert leg.hung_up


async def test_agent_core_killed_mid_call_ends_with_error(make_edge: Any) -> None:
    from aiohttp.test_utils import TestServer

    from telephony_edge.agent.demo import create_agent_core_app

    core = TestServer(create_agent_core_app(), host="127.0.0.1", port=0)
    await core.start_server()
    edge: Edge = await make_edge(
        edge_settings(agent_core={"url": str(core.make_url("/agent")).replace("http", "ws")})
    )
    leg = TestLeg()
    record, task = await start_call(edge, leg)
    await wait_for(lambda: record.state is CallState.ACTIVE)
    await core.close()
    final = await asyncio.wait_for(task, 10)
    assert final.call_status is CallStatus.ERROR
    assert final.error_message and "agent core" in final.error_message
    assert leg.hung_up


async def test_max_duration_times_out(make_edge: Any) -> None:
    edge: Edge = await make_edge(edge_settings(calls={"max_duration_s": 1.0}))
    leg = TestLeg()
    _, task = await start_call(edge, leg)
    final = await asyncio.wait_for(task, 10)
    assert final.call_status is CallStatus.TIMEOUT
    assert final.error_message and "maximum call duration" in final.error_message
    assert leg.hung_up


async def test_no_task_is_left_behind(make_edge: Any, speech: bytes) -> None:
    edge: Edge = await make_edge()
    before = {t for t in asyncio.all_tasks() if not t.done()}
    leg = TestLeg()
    record, task = await start_call(edge, leg)
    await leg.speak(speech[:16000])
    await wait_for(lambda: record.state is CallState.ACTIVE)
    leg.events.put_nowait(LegEnded("completed"))
    await asyncio.wait_for(task, 5)
    await asyncio.sleep(0.1)
    left = {t for t in asyncio.all_tasks() if not t.done()} - before - {asyncio.current_task()}
    names = sorted(t.get_name() for t in left)
    assert not [n for n in names if record.call_id in n], names
    assert edge.services.calls.active == 0


async def test_pause_holds_agent_audio_until_unpause(make_edge: Any) -> None:
    edge: Edge = await make_edge()
    leg = TestLeg()
    record, task = await start_call(edge, leg, metadata={"demo_pause_ms": 800})
    await wait_for(lambda: record.state is CallState.ACTIVE)
    active_at = asyncio.get_running_loop().time()
    await wait_for(lambda: any(voiced(f) for _, f in leg.heard), within=5)
    first_voiced = next(t for t, f in leg.heard if voiced(f))
    # the core sent its greeting at once but paused us: nothing plays for ~800 ms
    assert first_voiced - active_at > 0.6
    leg.events.put_nowait(LegEnded("completed"))
    await asyncio.wait_for(task, 5)


async def test_inactivity_times_out(make_edge: Any) -> None:
    edge: Edge = await make_edge(edge_settings(calls={"inactivity_timeout_s": 0.5}))
    leg = TestLeg()
    _record, task = await start_call(edge, leg)
    # the greeting counts as activity; silence after it does not
    for _ in range(150):
        leg.events.put_nowait(bytes(640))
    final = await asyncio.wait_for(task, 10)
    assert final.call_status is CallStatus.TIMEOUT
    assert final.error_message == "no activity for 0.5s"
    # it did not fire during the 1.5 s greeting
    assert sum(voiced(f) for _, f in leg.heard) * 0.02 > 1.2
    assert leg.hung_up


class BrokenLeg(TestLeg):
    """A network whose socket fails when the agent's audio is written."""

    def send_frame(self, frame: bytes, talkspurt_start: bool) -> None:
        raise ConnectionResetError("peer went away")


async def test_a_failing_leg_ends_its_call_and_spares_the_others(make_edge: Any) -> None:
    edge: Edge = await make_edge()
    good, broken = TestLeg(), BrokenLeg()
    good_record, good_task = await start_call(edge, good)
    _, broken_task = await start_call(edge, broken)
    final = await asyncio.wait_for(broken_task, 10)
    assert final.call_status is CallStatus.ERROR
    assert "peer went away" in (final.error_message or "")
    # the shared clock keeps playing the other call
    heard = len(good.heard)
    await wait_for(lambda: len(good.heard) > heard + 10, within=3)
    assert good_record.state is CallState.ACTIVE
    good.events.put_nowait(LegEnded("completed"))
    assert (await asyncio.wait_for(good_task, 5)).call_status is CallStatus.USER_ENDED


class PulledLeg(TestLeg):
    """A network whose own sender pulls agent frames at its pace (as aiortc's does)."""

    clock = Clock.PULLED

    def attach(self, source: FrameSource) -> None:
        self.source = source
        self.puller = asyncio.ensure_future(self._pull())

    def send_frame(self, frame: bytes, talkspurt_start: bool) -> None:
        raise AssertionError("a pulled leg is never pushed")

    async def _pull(self) -> None:
        loop = asyncio.get_running_loop()
        while not self.closed:
            frame = self.source.next_frame()
            self.heard.append((loop.time(), frame or SILENCE_FRAME))
            await asyncio.sleep(0.02)

    async def close(self) -> None:
        self.closed = True
        self.puller.cancel()


async def test_a_pulled_leg_takes_agent_audio_at_its_own_pace(
    make_edge: Any, speech: bytes
) -> None:
    edge: Edge = await make_edge()
    leg = PulledLeg()
    record, task = await start_call(edge, leg)
    await leg.speak(speech, silence_after_s=1.0)
    # the greeting and the echo both reach the caller through next_frame()
    await wait_for(lambda: sum(voiced(f) for _, f in leg.heard) * 0.02 > 1.2)
    assert record.state is CallState.ACTIVE
    leg.events.put_nowait(LegEnded("completed"))
    final = await asyncio.wait_for(task, 5)
    assert final.call_status is CallStatus.USER_ENDED and leg.closed


async def test_talkspurt_starts_reach_the_leg(make_edge: Any, speech: bytes) -> None:
    edge: Edge = await make_edge()
    leg = TestLeg()
    _, task = await start_call(edge, leg)
    await leg.speak(speech, silence_after_s=1.0)
    await wait_for(lambda: sum(voiced(f) for _, f in leg.heard) * 0.02 > 1.2)
    assert leg.talkspurts >= 2  # the greeting, then the echo after a pause
    leg.events.put_nowait(LegEnded("completed"))
    await asyncio.wait_for(task, 5)


class MeasuringLeg(TestLeg):
    """A leg that sees its media packet by packet (RTP) and reports statistics at the end."""

    async def media_stats(self) -> dict[str, Any]:
        assert not self.closed, "statistics are read before the leg closes"
        return {"packets_lost": 3, "jitter_ms": 4.5}


async def test_the_legs_media_statistics_are_stored_with_the_end(make_edge: Any) -> None:
    edge: Edge = await make_edge()
    leg = MeasuringLeg()
    record, task = await start_call(edge, leg)
    await wait_for(lambda: record.state is CallState.ACTIVE)
    leg.events.put_nowait(LegEnded("completed"))
    final = await asyncio.wait_for(task, 5)
    assert final.media_stats == {"packets_lost": 3, "jitter_ms": 4.5}
    stored = await edge.services.coordinator.get_call(record.call_id)
    assert stored is not None and stored.data["media_stats"] == final.media_stats


@dataclass(eq=False)
class SinkLeg(TestLeg):
    """A leg that makes caller frames in a callback of its own, as SIP's pacer tick does:
    each offered to the bridge's sink first, queued for ``recv`` when it says no."""

    __test__ = False
    sunk: int = 0
    queued: int = 0

    def make_frame(self, frame: bytes) -> None:
        sink = self.frame_sink
        if sink is not None and self.events.empty() and sink(frame):
            self.sunk += 1
        else:
            self.queued += 1
            self.events.put_nowait(frame)


async def test_a_leg_hands_caller_frames_to_the_bridge_past_its_queue(
    make_edge: Any, speech: bytes
) -> None:
    """Issue 21: a frame made in the leg's own callback goes to the agent there and then,
    with no wake-up of the caller pump; until the agent is ready frames queue, in order."""
    edge: Edge = await make_edge()
    leg = SinkLeg()
    record, task = await start_call(edge, leg)
    await leg.speak(SILENCE_FRAME * 10)  # while the agent link connects: queued
    assert leg.queued >= 1
    await wait_for(lambda: record.state is CallState.ACTIVE)
    await asyncio.sleep(0.5)
    queued = leg.queued
    await leg.speak(speech, silence_after_s=1.0)
    frames = len(speech) // 640 + 50
    assert leg.sunk >= frames * 0.9, (leg.sunk, leg.queued - queued)
    # the echo agent heard it all: the caller's words come back
    await wait_for(lambda: sum(voiced(f) for _, f in leg.heard) * 0.02 > len(speech) / 32000 * 0.6)
    leg.events.put_nowait(LegEnded("completed"))
    final = await asyncio.wait_for(task, 5)
    assert final.call_status is CallStatus.USER_ENDED
    assert leg.frame_sink is None  # nothing reaches a bridge that has let go


async def test_a_frame_that_fails_in_the_legs_callback_fails_its_call_not_the_leg(
    make_edge: Any, monkeypatch: Any
) -> None:
    """The sink runs in the leg's callback (SIP: the worker's pacer tick, which drops a
    tick that raises): a bug there ends the call ``error``, as in its pump, and never
    reaches the leg."""
    edge: Edge = await make_edge()
    leg = SinkLeg()
    record, task = await start_call(edge, leg)
    await wait_for(lambda: record.state is CallState.ACTIVE)
    await wait_for(lambda: leg.frame_sink is not None)
    await asyncio.sleep(0.3)  # the greeting's chime: the pump idle again

    def broken(frame: bytes) -> bool:
        raise RuntimeError("a bug on the caller's path")

    bridge = edge.services.call_service.manager.get(record.call_id)
    monkeypatch.setattr(bridge, "_take_caller_frame", broken)
    leg.make_frame(SILENCE_FRAME)  # raises nothing here
    final = await asyncio.wait_for(task, 5)
    assert final.call_status is CallStatus.ERROR
    assert "a bug on the caller's path" in (final.error_message or "")
