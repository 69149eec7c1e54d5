"""ICE configuration for the edge's peer connections (aiortc/aioice).

aioice gathers host candidates on every interface but loopback
(``aioice.ice.get_host_addresses``) and has no option to choose them.
:func:`gather_on` makes one peer connection gather on a given list of
addresses instead (its own, nothing process-wide): each ICE gatherer's
connection gets a ``gather_candidates`` that binds its components to exactly
those addresses, as aioice's own does with its list, then asks the STUN/TURN
servers as usual. Checked against aioice 0.13 (``Connection`` keeps
``_local_candidates`` and the start/end flags that ``connect`` checks).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from aioice import Connection
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection
from aiortc.rtcicetransport import RTCIceGatherer

from telephony_edge.webrtc.settings import WebRtcSettings


def configuration(settings: WebRtcSettings) -> RTCConfiguration:
    """The peer connection's ICE servers; an empty list means none at all."""
    return RTCConfiguration(
        iceServers=[
            RTCIceServer(urls=s.urls, username=s.username, credential=s.credential)
            for s in settings.ice_servers
        ]
    )


def _gatherers(pc: RTCPeerConnection) -> list[RTCIceGatherer]:
    found: dict[int, RTCIceGatherer] = {}
    for transceiver in pc.getTransceivers():
        gatherer = transceiver.sender.transport.transport.iceGatherer
        found[id(gatherer)] = gatherer
    if pc.sctp is not None:
        gatherer = pc.sctp.transport.transport.iceGatherer
        found[id(gatherer)] = gatherer
    return list(found.values())


def gather_on(pc: RTCPeerConnection, addresses: Sequence[str]) -> None:
    """Make ``pc`` offer host candidates on ``addresses`` (call before it gathers)."""
    if not addresses:
        return
    for gatherer in _gatherers(pc):
        connection = gatherer._connection
        setattr(connection, "gather_candidates", _gather(connection, list(addresses)))  # noqa: B010


def _gather(
    connection: Connection, addresses: list[str]
) -> Callable[[], Coroutine[Any, Any, None]]:
    async def gather_candidates() -> None:
        if connection._local_candidates_start:
            return
        connection._local_candidates_start = True
        for component in connection._components:
            connection._local_candidates += await connection.get_component_candidates(
                component=component, addresses=addresses
            )
        connection._local_candidates_end = True

    return gather_candidates
