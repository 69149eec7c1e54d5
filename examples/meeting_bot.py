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
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fractions
import json
import sys
import time

import aiohttp
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaPlayer, MediaRecorder
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


async def join(args: argparse.Namespace) -> int:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))  # add STUN/TURN across NATs
    player = MediaPlayer(args.play, format=args.format)
    if player.audio is None:
        print(f"{args.play}: no audio", flush=True)
        return 1
    pc.addTrack(ThenSilence(player.audio) if args.format is None else player.audio)
    recorder = MediaRecorder(args.record)
    ended = asyncio.Event()

    @pc.on("track")
    def on_track(track: MediaStreamTrack) -> None:
        recorder.addTrack(track)

    @pc.on("connectionstatechange")
    def on_state() -> None:
        print(f"connection {pc.connectionState}", flush=True)
        if pc.connectionState in ("failed", "closed"):
            ended.set()

    events = pc.createDataChannel("events")  # captions in, requests out

    @events.on("message")
    def on_message(text: str) -> None:
        message = json.loads(text)
        if "text" in message:  # captions; the edge's notices (hangup, move) have none
            print(f"{message['type']}: {message['text']}", flush=True)

    await pc.setLocalDescription(await pc.createOffer())  # aiortc gathers before returning
    offer = {"sdp": pc.localDescription.sdp, "type": pc.localDescription.type}
    body = {"agent_id": args.agent_id, "metadata": {"bot": "meeting_bot"}, "offer": offer}
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            args.edge.rstrip("/") + "/webrtc/offer",
            json=body,
            headers={"Authorization": f"Bearer {args.key}"},
        ) as resp,
    ):
        answer = await resp.json()
    if resp.status != 200:
        print(f"the edge refused the offer ({resp.status}): {answer.get('error')}", flush=True)
        await pc.close()
        return 1
    print(f"call {answer['call_id']}", flush=True)
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type=answer["type"]))
    await recorder.start()
    try:
        await asyncio.wait_for(ended.wait(), args.seconds)
        print("the edge ended the call", flush=True)
    except TimeoutError:
        if events.readyState == "open":
            events.send(json.dumps({"type": "end"}))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ended.wait(), 5)  # the edge hangs up
        print("hung up", flush=True)
    finally:
        await recorder.stop()
        await pc.close()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edge", default="http://127.0.0.1:8080", help="the edge's base URL")
    parser.add_argument("--key", required=True, help="the edge's api.private_key")
    parser.add_argument("--agent-id", default="demo")
    parser.add_argument("--play", required=True, help="a sound file, or a device (--format)")
    parser.add_argument("--format", default=None, help="ffmpeg input format for a device")
    parser.add_argument("--record", default="heard.wav", help="where to record the agent")
    parser.add_argument("--seconds", type=float, default=30.0, help="hang up after this long")
    return asyncio.run(join(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
