"""Fuzz the sans-I/O SIP user agent with random and mutated packets.

    python bench/sip_fuzz.py [--packets 100000] [--seed 1] [--in-dialog]

One :class:`~telephony_edge.sip.ua.UserAgent` takes every packet in turn (so
state builds up: calls are answered and hung up, timers fire as the clock
advances), fed from ``tests/sip/mutate.py``: 10 % random bytes, 5 % random
token soup, 5 % valid packets unchanged, the rest real trunk messages with one
to three mutations (byte flips, truncation, insertions, dropped or duplicated
lines, junk values, wrong Content-Length, other SIP versions, splices).
Counts per packet: answered 400 (or 505/416), dropped, other (taken as a valid
message), and internal errors, which must be 0; every byte the UA sends is
re-parsed and must be well formed.

``--in-dialog`` sends the mutations inside established dialogs instead
(``tests/sip/dialog_fuzz.py``): a target call is set up (INVITE, 200, ACK) and gets
its in-dialog requests (BYE, re-INVITE, UPDATE, INFO, PRACK, NOTIFY, REFER, OPTIONS,
ACK with its Call-ID, tags and CSeq), most of them mutated, a new target whenever
one ends; a witness call alongside must answer a genuine INFO every ten packets
and its BYE at the end. Counts: answered, dropped, taken; internal errors, malformed
output, witness calls lost and what is left must be 0.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from telephony_edge.sip.parse import ParseError, parse_message  # noqa: E402
from telephony_edge.sip.ua import UserAgent  # noqa: E402
from telephony_edge.sip.ua_records import Action, Send  # noqa: E402
from tests.sip import dialog_fuzz, mutate  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packets", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--in-dialog", action="store_true", help="mutate in-dialog requests")
    args = parser.parse_args()
    if args.in_dialog:
        return in_dialog(args.packets, args.seed)
    rng = random.Random(args.seed)
    ua = UserAgent()
    now = 0.0
    counts = {"answered_4xx_5xx": 0, "dropped": 0, "keepalive": 0, "other": 0}
    bad_output = 0
    sources = [("203.0.113.7", 5060), ("198.51.100.9", 40000), ("10.0.0.2", 5060)]

    def check(actions: list[Action]) -> None:
        nonlocal bad_output
        for a in actions:
            if isinstance(a, Send):
                try:
                    parse_message(a.data)
                except ParseError:
                    bad_output += 1

    started = time.perf_counter()
    for _ in range(args.packets):
        s = ua.stats
        before = (s.answered_400 + s.answered_505 + s.answered_416, s.dropped, s.keepalives)
        actions = ua.receive(mutate.packet(rng), rng.choice(sources), now)
        check(actions)
        after = (s.answered_400 + s.answered_505 + s.answered_416, s.dropped, s.keepalives)
        if after[0] > before[0]:
            counts["answered_4xx_5xx"] += 1
        elif after[1] > before[1]:
            counts["dropped"] += 1
        elif after[2] > before[2]:
            counts["keepalive"] += 1
        else:
            counts["other"] += 1
        for ref in list(ua.calls()):
            roll = rng.random()
            if roll < 0.05:
                check(ua.answer(ref, 40000, now))
            elif roll < 0.07:
                check(ua.hangup(ref, now))
        now += rng.choice([0.001, 0.01, 0.1, 1.0])
        deadline = ua.next_deadline()
        if deadline is not None and deadline <= now:
            check(ua.tick(now))
    elapsed = time.perf_counter() - started
    for ref in list(ua.calls()):
        check(ua.hangup(ref, now))
    for _ in range(100):  # let every timer run out: nothing may be left behind
        deadline = ua.next_deadline()
        if deadline is None:
            break
        now = deadline
        check(ua.tick(now))
    left = len(ua.calls()) + len(ua._machines)

    s = ua.stats
    print(f"packets: {args.packets} (seed {args.seed}) in {elapsed:.1f} s")
    for name, value in counts.items():
        print(f"  {name}: {value}")
    print(
        f"  of which answered 400: {s.answered_400}, 505: {s.answered_505}, 416: {s.answered_416}"
    )
    print(f"  calls started: {s.calls_started}; calls and transactions left: {left}")
    print(f"  internal errors: {s.internal_errors}; malformed output: {bad_output}")
    return 1 if s.internal_errors or bad_output or left else 0


def in_dialog(packets: int, seed: int) -> int:
    started = time.perf_counter()
    r = dialog_fuzz.run(packets, seed)
    elapsed = time.perf_counter() - started
    print(f"in-dialog packets: {r.packets} (seed {seed}) in {elapsed:.1f} s")
    print(f"  answered: {r.answered}, dropped: {r.dropped}, taken: {r.taken}")
    print("  by method: " + ", ".join(f"{m} {n}" for m, n in sorted(r.by_method.items())))
    print(f"  target dialogs set up: {r.targets} (a mutation that survives may end one)")
    print(f"  witness: {r.witness_info_ok} genuine INFOs answered 200, BYE {r.witness_bye}")
    print(f"  internal errors: {r.internal_errors}; malformed output: {r.bad_output}")
    print(f"  witness calls lost: {r.witness_lost}; calls and transactions left: {r.left}")
    return 0 if r.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
