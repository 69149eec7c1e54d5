"""One call's queue of the agent's keys toward the network: in order, one request at a time.

A ``send_dtmf`` request takes from a fraction of a second (RTP) to a REST
round trip (Twilio, Vonage) to go out, and an agent may ask for the next keys
before the last ones are through. So the call's requests wait here and go to
the leg one after the other, in the order asked; at most
:data:`MAX_WAITING` wait behind the one being sent, and one more is refused
at once rather than queued without bound. Whatever the leg raises goes back
to the agent core as an ``error`` (``send_dtmf failed: …``), counted in
``telephony_edge_dtmf_out_total{outcome="failed"}`` and warned; the call
goes on.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any

from telephony_edge import metrics
from telephony_edge.calls.dtmf import DtmfRequest
from telephony_edge.calls.leg import Leg, NotSupported

log = logging.getLogger(__name__)

MAX_WAITING = 4  # requests queued behind the one being sent

Spawn = Callable[[Coroutine[Any, Any, None], str], "asyncio.Task[None]"]


class DtmfQueue:
    """The call's ``send_dtmf`` requests on their way to ``leg``; see the module docstring."""

    def __init__(self, leg: Leg, spawn: Spawn, refused: Callable[[str], None]) -> None:
        """``spawn``: runs the sender as one of the call's tasks (stopped with the call);
        ``refused``: tells the agent core why a request did not go out."""
        self._leg = leg
        self._spawn = spawn
        self._refused = refused
        self._requests: deque[DtmfRequest] = deque()
        self._task: asyncio.Task[None] | None = None
        self._outcome = {
            outcome: metrics.DTMF_OUT.labels(provider=leg.info.provider, outcome=outcome)
            for outcome in ("sent", "failed")
        }

    def put(self, request: DtmfRequest) -> None:
        if len(self._requests) > MAX_WAITING:  # the first one is being sent
            self._failed(request, f"more than {MAX_WAITING} requests are waiting")
            return
        self._requests.append(request)
        if self._task is None:
            self._task = self._spawn(self._send(), "dtmf")

    async def _send(self) -> None:
        leg = self._leg
        try:
            while self._requests:
                request = self._requests[0]
                try:
                    if not leg.capabilities.dtmf_out:
                        raise NotSupported("this network cannot send DTMF")
                    await leg.send_dtmf(request)
                except asyncio.CancelledError:  # the call ended meanwhile
                    raise
                except Exception as exc:  # the network's refusal, said to the core
                    self._failed(request, str(exc) or repr(exc))
                else:
                    self._outcome["sent"].inc()
                    log.info("dtmf sent to the caller: %s", request.digits)
                finally:
                    self._requests.popleft()
        finally:
            self._task = None

    def _failed(self, request: DtmfRequest, why: str) -> None:
        self._outcome["failed"].inc()
        log.warning("send_dtmf %s failed: %s", request.digits, why)
        self._refused(f"send_dtmf failed: {why}")
