"""A transfer the call's machine asked for, carried out on its leg.

The machine decides that a call transfers (:class:`~telephony_edge.calls.machine.Transfer`);
this is the bridge's one I/O step for it: the leg's ``transfer``, traced, its outcome
set on ``done`` (what the API's caller awaits) and returned for the machine.
"""

from __future__ import annotations

import asyncio
import logging

from telephony_edge.calls import machine as m
from telephony_edge.calls.leg import Leg, NotSupported
from telephony_edge.calls.trace import CallTrace

log = logging.getLogger(__name__)


def outcome_future(action: m.Transfer) -> asyncio.Future[None]:
    """Where the transfer's outcome goes: awaited by the API, or marked seen (the agent's:
    the machine alone needs it)."""
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    if action.by != "api":
        done.add_done_callback(_consume)
    return done


async def run_transfer(
    leg: Leg, trace: CallTrace, action: m.Transfer, done: asyncio.Future[None]
) -> m.TransferDone:
    """Transfer the call on ``leg``; what the machine is to be told."""
    destination = action.destination
    log.info("transferring the call to %s (asked by the %s)", destination, action.by)
    with trace.transfer(action.by) as span:
        try:
            if not leg.capabilities.can_transfer_to(destination):
                raise NotSupported(f"this network cannot transfer to {destination}")
            await leg.transfer(destination)
        except asyncio.CancelledError:  # the call ended meanwhile
            done.set_exception(NotSupported("the call ended during the transfer"))
            raise
        except Exception as exc:
            log.warning("transfer to %s failed: %s", destination, exc)
            span.fail(str(exc) or repr(exc))
            done.set_exception(exc)
            return m.TransferDone(destination, action.by, error=str(exc) or repr(exc))
    done.set_result(None)
    return m.TransferDone(destination, action.by)


def _consume(future: asyncio.Future[None]) -> None:
    """Mark an agent transfer's outcome as seen (the machine already got it)."""
    if not future.cancelled():
        future.exception()
