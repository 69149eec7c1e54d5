"""``telephony-edge simulate twilio``: one call from a WAV file to a running edge, with a
stand-in of Twilio's REST API for the edge's hang-up and transfer (:mod:`.simulator`).

Every ``telephony-edge`` command builds this parser, ``serve`` too: the simulator and
Twilio's SDK (its signature) are imported when the command runs, not here.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import wave
from typing import TYPE_CHECKING, Any

import aiohttp

from telephony_edge.errors import UserError, os_reason
from telephony_edge.simulate import (
    EXIT_USAGE,
    CallFailed,
    add_call_arguments,
    check_out,
    check_url,
    port_arg,
    wait_until_ready,
)
from telephony_edge.twilio.rest_standin import DEFAULT_ACCOUNT_SID, DEFAULT_PORT

if TYPE_CHECKING:
    from telephony_edge.twilio.rest_standin import TwilioRestStandIn
    from telephony_edge.twilio.simulator import SimulationResult


def add_simulate_cli(subparsers: Any) -> None:
    """Add ``simulate twilio`` to the ``telephony-edge`` command."""
    simulate = subparsers.add_parser("simulate", help="act as a network toward a running edge")
    networks = simulate.add_subparsers(dest="network", required=True)
    p = networks.add_parser("twilio", help="place a call as Twilio would (webhook + media stream)")
    add_call_arguments(p, "8 kHz")
    p.add_argument(
        "--auth-token",
        default=os.environ.get("TELEPHONY_EDGE_TWILIO__AUTH_TOKEN", ""),
        help="the edge's twilio.auth_token (default: $TELEPHONY_EDGE_TWILIO__AUTH_TOKEN)",
    )
    p.add_argument(
        "--account-sid",
        default=os.environ.get("TELEPHONY_EDGE_TWILIO__ACCOUNT_SID", DEFAULT_ACCOUNT_SID),
        help="the AccountSid sent in the webhook (default: $TELEPHONY_EDGE_TWILIO__ACCOUNT_SID "
        "or AC000...)",
    )
    p.add_argument(
        "--public-url",
        help="the URL the edge believes it is reached at (signature), if not --url",
    )
    p.add_argument(
        "--rest-port",
        type=port_arg,
        default=DEFAULT_PORT,
        metavar="PORT",
        help="serve a stand-in of Twilio's REST API on 127.0.0.1:PORT during the call, for "
        f"an edge whose twilio.api_base_url points there (deploy/demo.yaml; default: "
        f"{DEFAULT_PORT}; 0: none)",
    )
    p.set_defaults(func=_cmd_simulate_twilio)


def check_inputs(url: str, wav: str, out: str) -> bytes:
    """Check the command's inputs before the call; return the caller audio (μ-law).

    Raises :class:`UserError` naming the option and what is wrong, so a typo
    costs no call (and ``--out`` is not found unwritable after it).
    """
    from telephony_edge.twilio.simulator import load_wav_ulaw

    check_url(url)
    try:
        audio = load_wav_ulaw(wav)
    except FileNotFoundError:
        raise UserError(f"--wav {wav}: no such file", EXIT_USAGE) from None
    except OSError as exc:
        raise UserError(f"--wav {wav}: cannot read: {exc.strerror}", EXIT_USAGE) from None
    except (wave.Error, EOFError) as exc:
        raise UserError(f"--wav {wav}: not a WAV file this can read ({exc})", EXIT_USAGE) from None
    except ValueError as exc:
        raise UserError(f"--wav {exc}", EXIT_USAGE) from None
    check_out(out)
    return audio


def _cmd_simulate_twilio(args: argparse.Namespace) -> int:
    from telephony_edge.twilio.simulator import RATE, write_wav_ulaw

    audio = check_inputs(args.url, args.wav, args.out)
    t0 = time.monotonic()
    result = asyncio.run(_simulate_when_ready(args, audio))
    write_wav_ulaw(args.out, result.heard_ulaw)
    print(result.summary())
    heard_s = len(result.heard_ulaw) / RATE
    print(f"  wrote {args.out} ({heard_s:.1f} s heard) in {time.monotonic() - t0:.1f} s")
    failure = result.failure()
    if failure is not None:
        raise CallFailed(failure)
    return 0


async def _simulate_when_ready(args: argparse.Namespace, audio: bytes) -> SimulationResult:
    from telephony_edge.twilio.simulator import simulate_call

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        if args.wait_ready > 0:
            await wait_until_ready(session, args.url, within_s=args.wait_ready)
        rest = None
        if args.rest_port:
            rest = await _start_rest_standin(args.account_sid, args.auth_token, args.rest_port)
        try:
            return await simulate_call(
                args.url,
                to=args.to,
                from_=args.from_,
                audio_ulaw=audio,
                auth_token=args.auth_token,
                account_sid=args.account_sid,
                public_url=args.public_url,
                session=session,
                speak_after=args.speak_after,
                dtmf=args.dtmf,
                max_tail_s=args.tail,
                rest=rest,
            )
        finally:
            if rest is not None:
                await rest.close()


async def _start_rest_standin(
    account_sid: str, auth_token: str, port: int
) -> TwilioRestStandIn | None:
    """The REST stand-in on 127.0.0.1:``port``, or None (one line on stderr) if it cannot listen.

    The call goes on without it: the edge's hang-up then fails where it
    would have reached the stand-in, and says so in its log.
    """
    from telephony_edge.twilio.rest_standin import TwilioRestStandIn

    rest = TwilioRestStandIn(account_sid, auth_token)
    try:
        await rest.start(port)
    except OSError as exc:
        print(
            f"telephony-edge simulate twilio: note: no REST stand-in on 127.0.0.1:{port} "
            f"({os_reason(exc)}); the edge's REST hang-up will fail",
            file=sys.stderr,
        )
        return None
    return rest
