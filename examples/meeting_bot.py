"""A meeting bot's audio path: join an agent over WebRTC through ``POST /webrtc/offer``.

The bot is an aiortc peer connection. It plays a file then silence (or a device
that ffmpeg can open) as its microphone, records what the agent says, prints the
agent's captions from the data channel, and hangs up (``{"type": "end"}``)
after ``--seconds`` or when the edge ends the call. In a conference-platform
bot, the platform's mixed audio replaces the file and the recorded track goes
back into the meeting.

    .venv/bin/python examples/meeting_bot.py --edge http://127.0.0.1:8080 \\
        --key "$PRIVATE_KEY" --agent-id demo \\
        --play tests/fixtures/speech_table.wav --record heard.wav --seconds 15

A device instead of a file: ``--play default --format pulse`` (PulseAudio),
``--play hw:0 --format alsa``.

The call outlives the edge's worker: when the agent's audio stops for a second
(the edge sends a frame every 20 ms) and the edge did not say ``hangup``, the
bot re-offers with the call's ``resume_token`` to the next ``--edge`` URL (give
several, or one load-balanced URL) and the call goes on there; ``move`` (a
worker draining) re-offers at once.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fractions
import json
import sys
import time
from typing import Any

import aiohttp
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaPlayer, MediaRecorder, MediaRelay
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import AudioFrame


class ThenSilence(MediaStreamTrack):
    """The file, then silence: a meeting's audio goes on after someone stops talking
    (and the agent hears the end of the utterance). Silence continues the file's
    timestamps, paced at 20 ms frames."""

    kind = "audio"

    def __init__(self, source: MediaStreamTrack) -> None:
        super().__init__()
        self.source: MediaStreamTrack | None = source
        self.rate, self.layout, self.pts = 48_000, "mono", 0
        self.silent, self.since = 0, 0.0

    async def recv(self) -> AudioFrame:
        if self.source is not None:
            try:
                frame = await self.source.recv()
                assert isinstance(frame, AudioFrame) and frame.pts is not None
                assert frame.time_base is not None
                self.rate, self.layout = frame.sample_rate, frame.layout.name
                self.pts = int(frame.pts * frame.time_base * self.rate) + frame.samples
                return frame
            except MediaStreamError:
                self.source, self.since = None, time.monotonic()
        self.silent += 1
        await asyncio.sleep(max(0.0, self.since + self.silent * 0.02 - time.monotonic()))
        samples = self.rate // 50
        silence = AudioFrame(format="s16", layout=self.layout, samples=samples)
        for plane in silence.planes:
            plane.update(bytes(plane.buffer_size))
        silence.sample_rate, silence.pts = self.rate, self.pts
        silence.time_base = fractions.Fraction(1, self.rate)
        self.pts += samples
        return silence


class Heard(MediaStreamTrack):
    """The agent's audio from whichever connection carries the call now, for the recorder
    (timestamps its own, so a move is a pause in the file); ``last``: when it last came."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self.current: MediaStreamTrack | None = None
        self.pts = 0
        self.last = time.monotonic()

    async def recv(self) -> AudioFrame:
        while True:
            track = self.current
            if track is None:
                await asyncio.sleep(0.02)
                continue
            try:
                frame = await track.recv()
            except MediaStreamError:  # that connection closed: the next one's track
                if track is self.current:
                    self.current = None
                continue
            assert isinstance(frame, AudioFrame)
            self.last = time.monotonic()
            frame.pts, frame.time_base = self.pts, fractions.Fraction(1, frame.sample_rate)
            self.pts += frame.samples
            return frame


class Call:
    """The bot's call: one peer connection at a time, re-offered with the resume token."""

    def __init__(self, args: argparse.Namespace, mic: MediaStreamTrack) -> None:
        self.args, self.relay, self.mic = args, MediaRelay(), mic
        self.heard = Heard()
        self.ended = asyncio.Event()  # the edge ended the call (hangup, or it closed)
        self.pc: RTCPeerConnection | None = None
        self.events: Any = None
        self.call_id = self.token = ""
        self.edge = 0  # which --edge URL the call is on
        self.over = False  # the edge said hangup: never re-offer

    async def connect(self, http: aiohttp.ClientSession, resume: bool) -> int:
        """Offer (with ``resume``: the call's id and token) to the current --edge URL; the
        HTTP status (200: connected or connecting)."""
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))  # add STUN/TURN across NATs
        pc.addTrack(self.relay.subscribe(self.mic, buffered=False))

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            self.heard.current = track

        @pc.on("connectionstatechange")
        def on_state() -> None:
            if pc is self.pc:
                print(f"connection {pc.connectionState}", flush=True)
                if pc.connectionState in ("failed", "closed") and self.over:
                    self.ended.set()

        events = pc.createDataChannel("events")  # captions in, requests out

        @events.on("message")
        def on_message(text: str) -> None:
            message = json.loads(text)
            if "text" in message:
                print(f"{message['type']}: {message['text']}", flush=True)
            elif message.get("type") == "hangup" and pc is self.pc:
                self.over = True  # a normal end: the connection closes next
            elif message.get("type") == "move" and pc is self.pc:
                self.heard.last = 0.0  # the watch re-offers at once

        await pc.setLocalDescription(await pc.createOffer())  # aiortc gathers before returning
        offer = {"sdp": pc.localDescription.sdp, "type": pc.localDescription.type}
        body: dict[str, Any] = {"agent_id": self.args.agent_id, "offer": offer}
        if resume:
            body["resume"] = {"call_id": self.call_id, "token": self.token}
        else:
            body["metadata"] = {"bot": "meeting_bot"}
        url = self.args.edge[self.edge % len(self.args.edge)].rstrip("/") + "/webrtc/offer"
        try:
            async with http.post(
                url, json=body, headers={"Authorization": f"Bearer {self.args.key}"}
            ) as resp:
                status, answer = resp.status, await resp.json()
        except aiohttp.ClientError as exc:
            print(f"{url}: {exc!r}", flush=True)
            await pc.close()
            return 503
        if status != 200:
            print(f"the edge refused the offer ({status}): {answer.get('error')}", flush=True)
            await pc.close()
            return status
        old, self.pc, self.events = self.pc, pc, events
        self.call_id, self.token = answer["call_id"], answer.get("resume_token", "")
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))
        self.heard.last = time.monotonic()
        if old is not None:  # only once the call is back (a live worker takes a close as a hang-up)
            await old.close()
        return status

    async def watch(self, http: aiohttp.ClientSession) -> None:
        """Re-offer to the next --edge URL when the agent's audio stopped for a second."""
        while not self.ended.is_set():
            await asyncio.sleep(0.1)
            silent = time.monotonic() - self.heard.last
            if silent < 1.0 or self.over:
                continue
            if not self.token:
                print("the call's worker is gone and the call has no resume token", flush=True)
                self.ended.set()
                return
            for attempt in range(8):
                self.edge += 1
                print(f"no audio for {silent:.1f} s: re-offering to the next worker", flush=True)
                status = await self.connect(http, resume=True)
                if status == 200:
                    print(f"call {self.call_id} resumed", flush=True)
                    break
                if status in (403, 404, 409):
                    self.ended.set()
                    return
                await asyncio.sleep(0.25 * (attempt + 1))
            else:
                self.ended.set()


async def join(args: argparse.Namespace) -> int:
    player = MediaPlayer(args.play, format=args.format)
    if player.audio is None:
        print(f"{args.play}: no audio", flush=True)
        return 1
    call = Call(args, ThenSilence(player.audio) if args.format is None else player.audio)
    recorder = MediaRecorder(args.record)
    recorder.addTrack(call.heard)
    async with aiohttp.ClientSession() as http:
        if await call.connect(http, resume=False) != 200:
            return 1
        print(f"call {call.call_id}", flush=True)
        await recorder.start()
        watch = asyncio.ensure_future(call.watch(http))
        try:
            await asyncio.wait_for(call.ended.wait(), args.seconds)
            print("the edge ended the call", flush=True)
        except TimeoutError:
            if call.events is not None and call.events.readyState == "open":
                call.events.send(json.dumps({"type": "end"}))
                call.over = True
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(call.ended.wait(), 5)  # the edge hangs up
            print("hung up", flush=True)
        finally:
            watch.cancel()
            await recorder.stop()
            if call.pc is not None:
                await call.pc.close()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--edge",
        action="append",
        help="the edge's base URL (default http://127.0.0.1:8080); again: where to re-offer",
    )
    parser.add_argument("--key", required=True, help="the edge's api.private_key")
    parser.add_argument("--agent-id", default="demo")
    parser.add_argument("--play", required=True, help="a sound file, or a device (--format)")
    parser.add_argument("--format", default=None, help="ffmpeg input format for a device")
    parser.add_argument("--record", default="heard.wav", help="where to record the agent")
    parser.add_argument("--seconds", type=float, default=30.0, help="hang up after this long")
    args = parser.parse_args()
    args.edge = args.edge or ["http://127.0.0.1:8080"]
    return asyncio.run(join(args))


if __name__ == "__main__":
    sys.exit(main())
