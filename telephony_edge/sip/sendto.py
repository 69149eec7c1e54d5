"""Datagram sends that fail alone: one bad destination never stops the send loop.

asyncio's ``sendto`` logs and drops a datagram it cannot send; uvloop's
(what ``serve`` runs) raises, for a host name, an address of the other
family or an unreachable network. Raised inside the SIP user agent's action
loop that would skip every later action of the same batch (other calls'
retransmissions and timers), so every SIP, RTP and RTCP send goes through
:func:`send_datagram`: a failure is counted, logged (sampled) and dropped,
the way a lost packet is.
"""

from __future__ import annotations

import asyncio
import logging

from telephony_edge import metrics
from telephony_edge.logs import sampled

log = logging.getLogger(__name__)

_FAILURES = {kind: metrics.SIP_SEND_FAILURES.labels(kind=kind) for kind in ("sip", "rtp", "rtcp")}
_failed = dict.fromkeys(_FAILURES, 0)


def send_datagram(
    transport: asyncio.DatagramTransport | None, data: bytes, dest: tuple[str, int], kind: str
) -> bool:
    """``transport.sendto(data, dest)``; False (counted, never raised) when it cannot be sent
    (``transport`` None: the worker has no socket of ``dest``'s family)."""
    try:
        if transport is None:
            raise OSError(f"no socket of the family of {dest[0]}"[:100])
        transport.sendto(data, dest)
    except (OSError, ValueError, TypeError) as exc:
        _FAILURES[kind].inc()
        _failed[kind] += 1
        if sampled(_failed[kind]):
            log.warning(
                "datagram not sent",
                extra={"kind": kind, "dest": f"{dest[0]}:{dest[1]}"[:300], "error": repr(exc)},
            )
        return False
    return True
