"""WebRTC step 1, server to server: a real aiortc client against the edge on real sockets.

The client (a peer connection in the test, host candidates on 127.0.0.1
only, no STUN) sends speech from ``tests/fixtures/speech_table.wav`` through
aiortc's ``MediaPlayer`` and counts what the edge's track sends back. The
edge runs in-process (``make_edge``) with the built-in demo agent core, and
advertises 127.0.0.1 (``webrtc.advertised_addresses``).
"""

from __future__ import annotations

import asyncio
import audioop
import json
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from telephony_edge.audio.frames import FRAME_BYTES
from telephony_edge.calls.record import CallState
from telephony_edge.config_loading import load_settings
from telephony_edge.webrtc.ice import gather_on
from telephony_edge.webrtc.leg import AgentTrack, WebRtcLeg
from telephony_edge.webrtc.provider import WEBRTC_PEERS
from tests.conftest import Edge, Receiver, read_wav, wait_for

API_KEY = "private-api-key-for-webrtc-tests"
LOOPBACK = ["127.0.0.1"]
#: the peers here are on loopback, which the edge refuses unless allowed
LOOPBACK_NETWORKS = ["127.0.0.0/8", "::1/128"]


def settings_for(receiver: Receiver, inactivity_s: float = 30, **webrtc: Any) -> Any:
    return load_settings(
        None,
        api={"private_key": API_KEY},
        webhooks={
            "signing_secret": "whsec_webrtc_tests_01",
            "allow_private_targets": True,
            "backoff_base_s": 0.05,
        },
        webrtc={
            "enabled": True,
            "advertised_addresses": LOOPBACK,
            "allowed_peer_networks": LOOPBACK_NETWORKS,
            **webrtc,
        },
        agents={
            "echo": {
                "prompt": "You echo.",
                "first_message": "Hi",
                "session_data_webhook": receiver.url,
            }
        },
        calls={"inactivity_timeout_s": inactivity_s},
    )


@pytest.fixture
async def edge(make_edge: Callable[..., Any], receiver: Receiver) -> Edge:
    result: Edge = await make_edge(settings_for(receiver, connect_timeout_s=10))
    return result


class Speech:
    """A frame source: 20 ms canonical frames of ``pcm``, then None (silence) for ever."""

    def __init__(self, pcm: bytes) -> None:
        self.frames = [
            pcm[i : i + FRAME_BYTES] for i in range(0, len(pcm) - FRAME_BYTES + 1, FRAME_BYTES)
        ]
        self.frames.reverse()

    def next_frame(self) -> bytes | None:
        return self.frames.pop() if self.frames else None


class Client:
    """A server-to-server caller: an aiortc peer connection that plays a WAV and listens."""

    def __init__(self, *, audio: bool = True, events: bool = False) -> None:
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.voiced = 0
        self.frames = 0
        self.reader: asyncio.Task[None] | None = None
        self.messages: list[dict[str, Any]] = []
        self.arrivals: list[tuple[float, int]] = []  # (loop time, pts) of each frame heard
        if events:  # the widget's data channel: captions in, requests out
            self.events = self.pc.createDataChannel("events")
            self.events.on("message", lambda text: self.messages.append(json.loads(text)))
        if audio:
            # the edge's own outbound track, fed the speech then silence (the core's VAD
            # hears the end of the utterance, as from a caller who stops talking)
            self.mic = AgentTrack()
            self.mic.source = Speech(read_wav("speech_table.wav"))
            self.pc.addTrack(self.mic)
        else:
            self.pc.createDataChannel("captions")
        self.pc.on("track", self._on_track)

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio":
            self.reader = asyncio.ensure_future(self._listen(track))

    async def _listen(self, track: MediaStreamTrack) -> None:
        try:
            while True:
                frame = await track.recv()
                self.arrivals.append((asyncio.get_running_loop().time(), frame.pts or 0))
                pcm = frame.to_ndarray().tobytes()  # type: ignore[union-attr]
                self.frames += 1
                if audioop.rms(pcm, 2) > 300:
                    self.voiced += 1
        except MediaStreamError:
            pass

    async def offer(self) -> dict[str, str]:
        offer = await self.pc.createOffer()
        gather_on(self.pc, LOOPBACK)
        await self.pc.setLocalDescription(offer)
        return {"sdp": self.pc.localDescription.sdp, "type": "offer"}

    async def close(self) -> None:
        await self.pc.close()
        if self.reader is not None:
            self.reader.cancel()


async def post_offer(
    edge: Edge, body: dict[str, Any], key: str = API_KEY
) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            edge.url("/webrtc/offer"),
            json=body,
            headers={"Authorization": f"Bearer {key}"},
        ) as resp,
    ):
        return resp.status, await resp.json()


@pytest.mark.both_loops
async def test_a_call_over_webrtc_reaches_the_agent_and_ends_user_ended(
    edge: Edge, receiver: Receiver
) -> None:
    client = Client()
    try:
        offer = await client.offer()
        t0 = time.monotonic()
        status, answer = await post_offer(
            edge, {"agent_id": "echo", "metadata": {"who": "test"}, "offer": offer}
        )
        assert status == 200, answer
        assert answer["type"] == "answer" and answer["call_id"].startswith("call")
        assert " 127.0.0.1 " in answer["sdp"], "the edge offers its advertised address"
        await client.pc.setRemoteDescription(
            RTCSessionDescription(**{k: answer[k] for k in ("sdp", "type")})
        )
        await wait_for(lambda: client.pc.connectionState == "connected", within=10)
        connect_s = time.monotonic() - t0
        # the agent hears the caller (the echo core plays it back) and greets: voiced audio back
        await wait_for(lambda: client.voiced * 0.02 > 1.2, within=20)
        bridge = edge.services.calls.get(answer["call_id"])
        assert bridge is not None and bridge.record.state is CallState.ACTIVE
        assert isinstance(bridge.leg, WebRtcLeg) and bridge.leg.frames_in > 100  # the caller
        print(f"connected in {connect_s:.2f} s; {client.voiced}/{client.frames} voiced frames")
    finally:
        await client.close()
    await wait_for(lambda: receiver.received, within=10)
    [payload] = receiver.received
    assert payload["call_id"] == answer["call_id"]
    assert payload["call_status"] == "user-ended", payload
    assert payload["metadata"] == {"who": "test"}
    await wait_for(lambda: edge.app[WEBRTC_PEERS].count == 0)
    # the connection's RTP stats, read before the leg closed
    media = payload["voip"]["media"]
    assert media["codec"] == "opus/48000/2", media
    inbound, outbound = media["inbound"], media["outbound"]
    assert inbound["packets"] > 100 and 0 <= inbound["lost"] < 5, media
    assert 0 <= inbound["jitter_ms"] < 100, media
    assert outbound["packets"] > 100 and 0 <= outbound["lost"] < 5, media  # the client's RTCP
    assert 0 < outbound["round_trip_time_ms"] < 1000, media


async def test_bad_sdp_is_400(edge: Edge) -> None:
    status, body = await post_offer(
        edge, {"agent_id": "echo", "offer": {"sdp": "hello", "type": "offer"}}
    )
    assert status == 400 and "SDP" in body["error"]


async def test_a_wrong_type_is_400(edge: Edge) -> None:
    client = Client()
    offer = await client.offer()
    await client.close()
    status, body = await post_offer(
        edge, {"agent_id": "echo", "offer": {**offer, "type": "answer"}}
    )
    assert status == 400 and "type" in body["error"]


async def test_an_offer_without_audio_is_400(edge: Edge) -> None:
    client = Client(audio=False)
    offer = await client.offer()
    await client.close()
    status, body = await post_offer(edge, {"agent_id": "echo", "offer": offer})
    assert status == 400 and "no audio" in body["error"]
    assert not edge.services.calls.active and edge.app[WEBRTC_PEERS].count == 0


async def test_a_wrong_key_is_401(edge: Edge) -> None:
    status, _ = await post_offer(
        edge, {"agent_id": "echo", "offer": {"sdp": "v=0", "type": "offer"}}, key="nope"
    )
    assert status == 401


async def test_no_ice_within_the_timeout_ends_the_call_error(
    make_edge: Callable[..., Any], receiver: Receiver
) -> None:
    edge: Edge = await make_edge(settings_for(receiver, connect_timeout_s=1))
    client = Client()
    offer = await client.offer()
    status, answer = await post_offer(edge, {"agent_id": "echo", "offer": offer})
    assert status == 200, answer
    # the client never takes the answer: no ICE, no DTLS
    try:
        await wait_for(lambda: receiver.received, within=10)
    finally:
        await client.close()
    [payload] = receiver.received
    assert payload["call_status"] == "error"
    assert "did not connect within 1 s" in payload["error_message"], payload
    await wait_for(lambda: edge.app[WEBRTC_PEERS].count == 0)


async def test_over_the_peer_connection_cap_is_503(
    make_edge: Callable[..., Any], receiver: Receiver
) -> None:
    edge: Edge = await make_edge(settings_for(receiver, max_peer_connections=1))
    first, second = Client(), Client()
    try:
        status, _ = await post_offer(edge, {"agent_id": "echo", "offer": await first.offer()})
        assert status == 200
        status, body = await post_offer(edge, {"agent_id": "echo", "offer": await second.offer()})
        assert status == 503 and "peer connections" in body["error"]
    finally:
        await first.close()
        await second.close()
