"""ICE consent freshness (RFC 7675), fast enough to notice a caller gone within seconds.

Theory of operation
-------------------
A caller whose browser is killed, whose laptop sleeps or whose network drops
sends no BYE, no DTLS close and no RTCP BYE: its packets just stop. aioice
checks consent itself, but every 5 s (±20 %) and only after six failures,
so such a call lingered for about 30 s, with the agent talking to no one.

:func:`watch` sends a STUN Binding request on each nominated pair every
``interval_s`` (the peer's ICE agent must answer it, whatever its media is
doing: DTX, mute, hold) and returns once no authenticated answer has come
for ``timeout_s``. Each request is its own STUN transaction with two
retransmissions, so a late answer on a slow path still counts, and a lost
packet or two never ends a call: with the defaults (0.5 s, 3.5 s) seven checks
in a row and their retransmissions must all go unanswered.

Rules: what counts as consent is an authenticated Binding response (aioice's
transaction checks MESSAGE-INTEGRITY with the peer's password), never media,
which a stranger could send. Uses aioice 0.13's ``Connection._nominated``,
``build_request`` and ``StunProtocol.request``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aioice import Connection
from aioice.ice import CandidatePair

log = logging.getLogger(__name__)

RETRANSMISSIONS = 2  # per check: sent at 0, 0.5 and 1.5 s, given up at 3.5 s


async def watch(connection: Connection, interval_s: float, timeout_s: float) -> float:
    """Return (the seconds since the last answer) once the peer's consent has expired."""
    loop = asyncio.get_running_loop()
    last = loop.time()
    checks: set[asyncio.Task[None]] = set()

    async def check(pair: CandidatePair) -> None:
        nonlocal last
        password = connection.remote_password
        if password is None:
            return
        request = connection.build_request(pair, nominate=False)
        with contextlib.suppress(Exception):  # a timeout, an error response, a closed socket
            await pair.protocol.request(
                request,
                pair.remote_addr,
                integrity_key=password.encode("utf8"),
                retransmissions=RETRANSMISSIONS,
            )
            last = max(last, loop.time())

    try:
        while True:
            await asyncio.sleep(interval_s)
            silent = loop.time() - last
            if silent > timeout_s:
                return silent
            for pair in list(connection._nominated.values()):
                task = asyncio.ensure_future(check(pair))
                checks.add(task)
                task.add_done_callback(checks.discard)
    finally:
        for task in list(checks):
            task.cancel()
