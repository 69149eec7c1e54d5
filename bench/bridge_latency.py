"""Per-frame relay latency of the bridge with N concurrent calls.

One edge (this process, on uvloop when available) bridges N test legs to the
built-in agent core running in a separate process. Each leg speaks a speech
fixture at real time, pauses, and hears the echo, for the whole run. The
edge's own relay-latency samples (frame in from one side → out to the other,
excluding the wait for the frame's real-time slot) are collected and their
p50/p99 printed per direction, with the pacer's tick lateness and the edge's
CPU use.

    python bench/bridge_latency.py [--calls 50] [--seconds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from aiohttp.test_utils import TestServer  # noqa: E402

from telephony_edge import metrics  # noqa: E402
from telephony_edge.app import create_app, set_local_address  # noqa: E402
from telephony_edge.calls.leg import LegEnded  # noqa: E402
from telephony_edge.services import SERVICES  # noqa: E402
from tests.conftest import TestLeg, edge_settings, free_port, read_wav  # noqa: E402


class Samples:
    """Wraps a histogram child's observe() to keep the raw values as well."""

    def __init__(self, child: Any) -> None:
        self.values: list[float] = []
        original = child.observe

        def observe(value: float) -> None:
            self.values.append(value)
            original(value)

        child.observe = observe


def quantiles(values: list[float]) -> tuple[float, float, float]:
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return pick(0.5), pick(0.99), ordered[-1]


async def one_call(service: Any, speech: bytes, seconds: float) -> str:
    leg = TestLeg()
    record = await service.create(agent_id="echo", provider="test", direction="inbound")
    task = asyncio.create_task(service.run(record, leg))
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        await leg.speak(speech, silence_after_s=2.5)
    leg.events.put_nowait(LegEnded("completed"))
    final = await task
    return str(final.call_status)


async def main(calls: int, seconds: float) -> None:
    port = free_port()
    core = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "telephony_edge", "agent-core", "--port", str(port)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        await asyncio.sleep(1.5)
        settings = edge_settings(
            agent_core={"url": f"ws://127.0.0.1:{port}/agent"}, calls={"inactivity_timeout_s": 60}
        )
        app = create_app(settings)
        server = TestServer(app, host="127.0.0.1", port=0)
        await server.start_server()
        set_local_address(app, "127.0.0.1", server.port or 0)
        c2a = Samples(metrics.RELAY_LATENCY_SECONDS.labels(direction="caller_to_agent"))
        a2c = Samples(metrics.RELAY_LATENCY_SECONDS.labels(direction="agent_to_caller"))
        speech = read_wav("speech_table.wav")
        cpu0 = time.process_time()
        wall0 = time.monotonic()
        statuses = await asyncio.gather(
            *(one_call(app[SERVICES].call_service, speech, seconds) for _ in range(calls))
        )
        wall = time.monotonic() - wall0
        cpu = time.process_time() - cpu0
        await server.close()
    finally:
        core.terminate()
        await core.wait()
    loop_kind = type(asyncio.get_running_loop()).__module__
    print(f"{calls} concurrent calls, {seconds:.0f} s each, event loop from {loop_kind}")
    print(f"call outcomes: {dict((s, statuses.count(s)) for s in set(statuses))}")
    print(f"{'direction':<18}{'frames':>10}{'p50 µs':>10}{'p99 µs':>10}{'max µs':>10}")
    for name, samples in (("caller→agent", c2a), ("agent→caller", a2c)):
        p50, p99, top = quantiles(samples.values)
        row = f"{p50 * 1e6:>10.1f}{p99 * 1e6:>10.1f}{top * 1e6:>10.1f}"
        print(f"{name:<18}{len(samples.values):>10}{row}")
    frames = len(c2a.values) + len(a2c.values)
    print(
        f"edge process CPU: {cpu:.2f} s over {wall:.1f} s wall "
        f"({100 * cpu / wall:.0f}% of one core; {cpu / frames * 1e6:.1f} µs per relayed frame, "
        f"includes this bench's test legs)"
    )
    print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.run(main(args.calls, args.seconds))
    except ImportError:
        asyncio.run(main(args.calls, args.seconds))
