"""The pause of a full garbage collection in a worker, with and without ``gc.freeze()``.

    python bench/gc_pause.py [--objects 100000] [--repeat 5]

Builds the app as ``serve`` does (SIP and WebRTC enabled, so their libraries are
loaded), adds ``--objects`` small live objects as calls leave behind, and times
``gc.collect()`` (best of ``--repeat``): first as is, then after ``gc.freeze()``
has moved what start-up built out of the collector's reach, as ``serve`` does once
it listens. A full collection stops every call on the worker for its duration.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import time

from aiohttp import web

from telephony_edge.app import create_app
from telephony_edge.config_loading import load_settings


def collect_ms(repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        gc.collect()
        best = min(best, time.perf_counter() - started)
    return best * 1000


async def run(objects: int, repeat: int) -> None:
    settings = load_settings(
        None, api={"private_key": "k" * 24}, webrtc={"enabled": True}, sip={"enabled": True}
    )
    runner = web.AppRunner(create_app(settings))
    await runner.setup()
    try:
        calls = [[{"frame": n}] for n in range(objects)]  # what live calls hold
        print(f"{len(gc.get_objects())} objects tracked")
        print(f"full collection: {collect_ms(repeat):6.1f} ms")
        del calls
        gc.collect()
        gc.freeze()  # as serve does once it listens
        calls = [[{"frame": n}] for n in range(objects)]
        print(f"after gc.freeze(): {collect_ms(repeat):6.1f} ms")
        del calls
        gc.unfreeze()
    finally:
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(run(args.objects, args.repeat))


if __name__ == "__main__":
    main()
