"""WebRTC as a provider: ``POST /webrtc/offer`` and an aiortc peer connection per call.

Step 1 of issue 10 (server to server): a caller's system posts an SDP offer
with the private API key and gets the answer once ICE gathering is complete
(aiortc does not trickle). The call's leg is the PULLED kind: aiortc's RTP
sender calls the outbound track's ``recv()``, which takes agent frames from
the bridge (:mod:`telephony_edge.webrtc.leg`).
"""
