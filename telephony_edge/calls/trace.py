"""The spans of one call on the worker that runs its media (:mod:`telephony_edge.tracing`).

One trace per call. Its root is the span of the request that announced the
call (a carrier's webhook, an offer, the API), whose ``traceparent`` the
call record keeps from its creation; a call announced otherwise (a SIP
trunk's INVITE) starts its trace here, and the record keeps this one's. Under
the root, on the worker that bridges the media:

* ``call``: from the bridge's start to the call's end (``call_status``);
* ``call.setup``: its child, until the agent core's ``onready`` (or the
  failure that ended the set-up); the prefetch webhook is sent under it;
* ``agent_core.link``: from connect to the link's close; its ``traceparent``
  is what ``initiate`` carries, so the agent core's spans join the trace;
* ``call.transfer``: each transfer, with who asked and how it went.

The end-of-call webhook's span is the dispatcher's, under the record's
``traceparent``, on whichever worker sends it. With tracing off every span
here is :data:`~telephony_edge.tracing.NOOP`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from telephony_edge import tracing
from telephony_edge.calls.record import CallRecord


class CallTrace:
    """``call``, ``call.setup`` and ``agent_core.link`` of one call; transfers on demand."""

    def __init__(self, record: CallRecord) -> None:
        self.call = tracing.start(
            "call",
            parent=record.traceparent,
            attributes={
                "telephony_edge.call_id": record.call_id,
                "telephony_edge.provider": record.provider,
                "telephony_edge.direction": record.direction,
                "telephony_edge.agent_id": record.agent_id,
            },
        )
        if record.traceparent is None:  # the trace starts here: later spans join this one
            record.traceparent = self.call.traceparent
        self.setup = tracing.start("call.setup", parent=self.call.traceparent)
        self.link = tracing.NOOP
        self._setting_up = True

    def initiate(self, data: dict[str, Any], url: str) -> dict[str, Any]:
        """Start ``agent_core.link``; ``data`` (``initiate``'s) with its ``traceparent``."""
        self.link = tracing.start(
            "agent_core.link",
            parent=self.call.traceparent,
            kind="client",
            attributes={"url.full": url},
        )
        traceparent = self.link.traceparent
        return data if traceparent is None else {**data, "traceparent": traceparent}

    def ready(self) -> None:
        self._end_setup()

    def link_failed(self, stage: str, message: str) -> None:
        self.link.set("telephony_edge.stage", stage)
        self.link.fail(message)
        self.setup.fail(f"agent core {stage}: {message}")
        self._end_setup()

    @contextlib.contextmanager
    def transfer(self, by: str) -> Iterator[tracing.Span]:
        with tracing.span(
            "call.transfer",
            parent=self.call.traceparent,
            attributes={"telephony_edge.transfer.by": by},
        ) as span:
            yield span

    def ended(self, record: CallRecord) -> None:
        """The call is over: every span still open ends, ``call`` with its status."""
        if self._setting_up and record.call_status is not None:
            self.setup.fail(f"the call ended during set-up ({record.call_status})")
        self._end_setup()
        self.link.end()
        if record.call_status is not None:
            self.call.set("telephony_edge.call_status", str(record.call_status))
        if record.error_message:
            self.call.fail(record.error_message)
        self.call.end()

    def _end_setup(self) -> None:
        if self._setting_up:
            self._setting_up = False
            self.setup.end()
