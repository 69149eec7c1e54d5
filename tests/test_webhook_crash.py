"""A worker SIGKILLed at any step of a call's end loses no end-of-call webhook (issue 20).

Two ``telephony-edge serve`` workers share a real ``redis-server``. Worker B runs
throughout; worker A is started once per step of the teardown with that step's
failpoint armed (:mod:`telephony_edge.failpoints`), takes five calls, and dies by
SIGKILL when the first of them, hung up by its caller, reaches the step; the other
four die with it mid-call. Fifty calls in all, each cut at a known point. Worker B's
reapers and outbox sweep must then see every call reported: its webhook delivered
once, or twice with the same ``Idempotency-Key`` (a crash between a delivery and its
acknowledgement), never lost.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from telephony_edge.calls.webhooks import IDEMPOTENCY_HEADER
from telephony_edge.failpoints import ENV
from tests.conftest import ServeProcess, free_port, stop_serve_process, wait_for
from tests.coord.redis_servers import RedisProcess
from tests.test_redis_outage import hang_up, live_call, talker
from tests.test_redis_restart import (  # the fixture by its name: private_redis
    fixture_private_redis,  # noqa: F401
    webhook_receiver,
    worker_config,
)

FAILPOINTS = (
    "teardown.StopTasks",
    "teardown.CloseAgent",
    "teardown.CloseLeg",
    "teardown.ReleaseSlot",
    "teardown.WriteState",
    "teardown.written",  # the end and its debt are written; nothing queued yet
    "teardown.QueueWebhook",
    "outbox.queued",  # queued, the debt not yet settled
    "teardown.CloseLeg",
    "teardown.written",
)
CALLS_PER_WORKER = 5
LEASE_S = 2.0


def sid_of(payload: dict[str, Any]) -> str:
    """The CallSid of a delivered payload: the test's name for the call."""
    return str(payload["voip"]["provider_call_id"])


async def test_sigkill_at_every_step_of_the_teardown_loses_no_webhook(
    private_redis: RedisProcess, serve_process: Any
) -> None:
    prefix = f"crash{free_port()}:"
    async with talker() as core, webhook_receiver() as (hook, received):
        config = worker_config(private_redis.url, core, prefix, hook)
        config["calls"].update(lease_s=LEASE_S, lease_renew_s=LEASE_S / 3)
        config["webhooks"].update(owed_grace_s=1.0, owed_sweep_s=0.3)
        survivor: ServeProcess = serve_process(config)
        call_sids: list[str] = []
        async with aiohttp.ClientSession() as session:
            for failpoint in FAILPOINTS:
                doomed: ServeProcess = serve_process(config, env={ENV: failpoint})
                calls = [await live_call(doomed, session) for _ in range(CALLS_PER_WORKER)]
                call_sids += [call.call_sid for call, _ in calls]
                first, caller = calls[0]
                await hang_up(first, caller)
                await wait_for(lambda d=doomed: d.process.poll() is not None, 10)
                assert f"failpoint {failpoint}: SIGKILL" in doomed.log
                for _, caller in calls[1:]:
                    caller.cancel()
            # the survivor reaps the dead worker's calls and sweeps what they owe
            await wait_for(lambda: set(call_sids) <= {sid_of(p) for p in received}, 40)
            await asyncio.sleep(3 * LEASE_S)  # time for a second delivery, were one coming
        stop_serve_process(survivor)

    assert len(set(call_sids)) == len(FAILPOINTS) * CALLS_PER_WORKER == 50
    for sid in call_sids:
        got = {(p[IDEMPOTENCY_HEADER], p["call_id"]) for p in received if sid_of(p) == sid}
        assert 1 <= sum(sid_of(p) == sid for p in received) <= 2, sid
        [(key, call_id)] = got  # a duplicate is the same call with the same key
        assert key == call_id
    assert "Traceback" not in survivor.log, survivor.log[-3000:]
