"""The coordinator's part of the webhook outbox, on every backend (memory, Redis, Cluster).

A call's end and the webhook it owes are written in one step (``update_call`` with
``owed_at``); ``owed_calls`` lists the debts older than a cutoff, oldest first, until
``settle_owed``. See :mod:`telephony_edge.calls.outbox`.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from telephony_edge.coord.base import OWED_FIELD, Conflict, Coordinator
from tests.coord.test_contract import PAST_TTL, coord, make_record, new_id

__all__ = ["coord"]  # the backends' fixture, shared with the contract suite

JOB = {"call_id": "x", "url": "https://crm.example/ended", "body": '{"a": 1}', "headers": {}}


async def test_the_end_and_its_debt_are_one_write_and_settled_once(coord: Coordinator) -> None:
    first, second, live = new_id(), new_id(), new_id()
    now = time.time()
    for call_id in (first, second, live):
        await coord.create_call(call_id, make_record())
    ended = {"state": "ended", OWED_FIELD: JOB}
    await coord.update_call(second, ended, owed_at=now - 5)
    await coord.update_call(first, ended, owed_at=now - 10)
    await coord.update_call(live, {"state": "active"})
    # oldest first, only those owed before the cutoff, with the job as written
    assert await coord.owed_calls(now) == [(first, JOB), (second, JOB)]
    assert await coord.owed_calls(now - 7) == [(first, JOB)]
    assert await coord.owed_calls(now, limit=1) == [(first, JOB)]
    assert await coord.settle_owed(first)
    assert not await coord.settle_owed(first)  # once
    assert await coord.owed_calls(now) == [(second, JOB)]
    doc = await coord.get_call(first)
    assert doc is not None and OWED_FIELD not in doc.data and doc.data["state"] == "ended"


async def test_a_refused_end_owes_nothing(coord: Coordinator) -> None:
    call_id = new_id()
    await coord.create_call(call_id, make_record())
    with pytest.raises(Conflict):
        await coord.update_call(
            call_id, {"state": "ended", OWED_FIELD: JOB}, if_state=["active"], owed_at=time.time()
        )
    assert await coord.owed_calls(time.time() + 1) == []


async def test_a_debt_whose_record_expired_is_dropped(coord: Coordinator) -> None:
    call_id = new_id()
    await coord.create_call(call_id, make_record())
    await coord.update_call(call_id, {"state": "ended", OWED_FIELD: JOB}, owed_at=time.time())
    await asyncio.sleep(PAST_TTL)  # the ended record's TTL
    assert await coord.owed_calls(time.time() + 1) == []
    assert not await coord.settle_owed(call_id)
