"""Structured logs: JSON lines, and the call id on every line a call writes."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from telephony_edge.calls.leg import Dtmf
from telephony_edge.calls.record import CallState
from telephony_edge.logs import JsonFormatter
from tests.calls.test_bridge import start_call
from tests.conftest import Edge, TestLeg, wait_for


class ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(JsonFormatter())
        self.lines: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(self.format(record)))


async def test_call_lines_carry_the_call_id(make_edge: Any) -> None:
    handler = ListHandler()
    root = logging.getLogger("telephony_edge")
    root.addHandler(handler)
    old_level = root.level
    root.setLevel(logging.INFO)
    try:
        edge: Edge = await make_edge()
        leg, other = TestLeg(), TestLeg()
        record, task = await start_call(edge, leg)
        other_record, other_task = await start_call(edge, other)
        await wait_for(lambda: record.state is CallState.ACTIVE)
        await wait_for(lambda: other_record.state is CallState.ACTIVE)
        leg.events.put_nowait(Dtmf("9"))
        other.events.put_nowait(Dtmf("9"))
        await asyncio.wait_for(asyncio.gather(task, other_task), 20)
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
    call_lines = [
        line for line in handler.lines if line["logger"].startswith("telephony_edge.calls")
    ]
    assert len(call_lines) >= 6
    for line in call_lines:
        assert line["call_id"] in (record.call_id, other_record.call_id), line
        assert {"ts", "level", "msg"} <= line.keys()
    ending = [line for line in call_lines if line["msg"] == "call ending"]
    assert {line["call_id"] for line in ending} == {record.call_id, other_record.call_id}
