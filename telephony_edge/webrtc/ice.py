"""ICE configuration for the edge's peer connections (aiortc/aioice).

aioice gathers host candidates on every interface but loopback
(``aioice.ice.get_host_addresses``) and has no option to choose them.
:func:`gather_on` makes one peer connection gather on a given list of
addresses instead (its own, nothing process-wide): each ICE gatherer's
connection gets a ``gather_candidates`` that binds its components to exactly
those addresses, as aioice's own does with its list, then asks the STUN/TURN
servers as usual; with a port range (``webrtc.media_port_min``/``max``) the
host sockets are bound within it (:mod:`telephony_edge.webrtc.ports`).
Checked against aioice 0.13 (``Connection`` keeps ``_local_candidates`` and
the start/end flags that ``connect`` checks).

:func:`guard` makes a peer connection's ICE refuse remote addresses that
:class:`~telephony_edge.webrtc.candidates.PeerPolicy` refuses, where aioice
learns them after the offer's SDP was filtered: a trickled candidate (its
``_add_remote_candidate``, which every signalled candidate passes) and a
peer-reflexive one (``request_received``: a check from a refused source gets
no response and starts no triggered check).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from aioice import Candidate, Connection, stun
from aioice.ice import StunProtocol, get_host_addresses
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection
from aiortc.rtcicetransport import RTCIceGatherer

from telephony_edge.webrtc.candidates import PeerPolicy
from telephony_edge.webrtc.ports import PortRange, host_candidates
from telephony_edge.webrtc.settings import WebRtcSettings

#: told of each address the guard refuses: (kind, address)
OnRefused = Callable[[str, str], None]


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


def connections(pc: RTCPeerConnection) -> list[Connection]:
    """The aioice connections of ``pc`` (one with BUNDLE)."""
    return [gatherer._connection for gatherer in _gatherers(pc)]


def gather_on(
    pc: RTCPeerConnection, addresses: Sequence[str], ports: PortRange | None = None
) -> None:
    """Make ``pc`` offer host candidates on ``addresses`` (empty: aioice's list), on a port
    of ``ports`` when given (call before it gathers)."""
    if not addresses and ports is None:
        return
    for connection in connections(pc):
        gather = _gather(connection, list(addresses), ports)
        setattr(connection, "gather_candidates", gather)  # noqa: B010


def _gather(
    connection: Connection, addresses: list[str], ports: PortRange | None
) -> Callable[[], Coroutine[Any, Any, None]]:
    async def gather_candidates() -> None:
        if connection._local_candidates_start:
            return
        connection._local_candidates_start = True
        hosts = addresses or get_host_addresses(
            use_ipv4=connection._use_ipv4, use_ipv6=connection._use_ipv6
        )
        for component in connection._components:
            if ports is None:
                connection._local_candidates += await connection.get_component_candidates(
                    component=component, addresses=hosts
                )
            else:
                connection._local_candidates += await host_candidates(
                    connection, component, hosts, ports
                )
        connection._local_candidates_end = True

    return gather_candidates


def guard(pc: RTCPeerConnection, policy: PeerPolicy, on_refused: OnRefused) -> None:
    """Refuse what ``policy`` refuses on every ICE connection ``pc`` has now (idempotent)."""
    for gatherer in _gatherers(pc):
        connection = gatherer._connection
        if getattr(connection, "_edge_guarded", False):
            continue
        connection._edge_guarded = True  # type: ignore[attr-defined]
        _guard(connection, policy, on_refused)


def _guard(connection: Connection, policy: PeerPolicy, on_refused: OnRefused) -> None:
    add = connection._add_remote_candidate
    incoming = connection.request_received

    def add_remote_candidate(candidate: Candidate, network_host: str) -> None:
        kind = policy.refusal(network_host)
        if kind is not None:
            on_refused(kind, network_host)
            return
        add(candidate, network_host)

    def request_received(
        message: stun.Message, addr: tuple[str, int], protocol: StunProtocol
    ) -> None:
        kind = policy.refusal(addr[0])
        if kind is not None:
            on_refused(kind, addr[0])
            return
        incoming(message, addr, protocol)

    setattr(connection, "_add_remote_candidate", add_remote_candidate)  # noqa: B010
    setattr(connection, "request_received", request_received)  # noqa: B010
